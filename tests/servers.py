"""An in-process server for the serve tests: an ASGI app under uvicorn on a thread.

    with servers.serving(app) as (url, loop):
        ...   # url: http://127.0.0.1:PORT (a free port); loop: the server's event loop

It listens on 127.0.0.1 only, with `keras_xception.serve.local`'s server
class and log configuration (everything on stderr), runs the app's lifespan
(the batcher starts and stops with it), and only yields once uvicorn says it
is started. Leaving the block stops it.
"""

import asyncio
import contextlib
import threading


@contextlib.contextmanager
def serving(app, *, timeout=60, grace=5):
    import uvicorn

    from keras_xception.serve import local

    sock = local.bind("127.0.0.1", 0)
    config = uvicorn.Config(app, log_config=local.LOG_CONFIG, lifespan="on",
                            timeout_graceful_shutdown=grace)
    server = local._server_class()(config)
    ready = threading.Event()
    state = {}

    def on_ready():
        state["loop"] = asyncio.get_running_loop()
        ready.set()

    server.on_ready = on_ready
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert ready.wait(timeout), "the server did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", state["loop"]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def save_kitchen(kitchen_model, folder, classes):
    """The kitchenware model saved under `folder` with its class names."""
    from keras_xception.transfer import save_classifier

    path = folder / "kitchen.keras"
    save_classifier(kitchen_model, path, class_names=classes)
    return path
