"""`keras-xception serve`: the model over HTTP (TensorFlow Serving's REST API,
the Open Inference Protocol, classify and Grad-CAM for people, a page).

Everything that can be checked is checked first, each failure one line and
exit status 1 before the model is loaded: the `serve` extra, the options,
the API key file, the address (bound, not yet listening), the model source
(`keras_xception.serve.service.open_model`, the one model source). Then the
engine loads the model, runs a warm-up batch, listens and prints one line
on stderr, `serving NAME on http://HOST:PORT`. SIGTERM or Ctrl-C finishes
what is queued and in flight (up to `--grace-period`) and exits with status 0.

Everything goes to stderr (uvicorn's access log included); stdout stays
empty. The engines: `local` (uvicorn in this process,
`keras_xception.serve.local`) and `ray` (Ray Serve,
`keras_xception.serve.ray_serve`, when installed); both take the same
arguments (`run(source, settings, host=..., ...)`). Reference: docs/serve.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from keras_xception.checks import MAX_BATCH_SIZE
from keras_xception.cli._args import int_from_1_to, positive_int

API_KEY_ENV = "KERAS_XCEPTION_API_KEY"

# --engine: the module whose `run` serves, by name.
ENGINES = {"local": "keras_xception.serve.local", "ray": "keras_xception.serve.ray_serve"}


def _port(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"must be a port number from 0 to 65535 (0: any free port). Received: {text!r}")
    return value


def _number(text, *, zero):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 <= value if zero else 0 < value) or value == float("inf"):
        what = "a finite number of 0 or more" if zero else "a finite number above 0"
        raise argparse.ArgumentTypeError(f"must be {what}. Received: {text!r}")
    return value


def _seconds(text):
    return _number(text, zero=True)


def _positive_number(text):
    return _number(text, zero=False)


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "serve",
        help="serve the model over HTTP (TensorFlow Serving REST, Open Inference "
        "Protocol, a page)",
        description="Serve Xception over HTTP: TensorFlow Serving's REST API "
        "(POST /v1/models/NAME:predict), the Open Inference Protocol v2 with binary "
        "tensors (POST /v2/models/NAME/infer), POST /v1/models/NAME:classify and "
        ":explain, a page at / and Prometheus metrics at /metrics. Requests are "
        "batched; a full queue answers 503 at once. It prints one line on stderr "
        "once ready; SIGTERM or Ctrl-C finishes the requests in flight and exits 0. "
        "Reference: docs/serve.md.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", default="imagenet",
                        help="'imagenet' (default), a weights file or an http(s) URL "
                        "of one; weights without the classifier top serve the "
                        "2048-float embedding")
    source.add_argument("--model", metavar="PATH.keras",
                        help="a fine-tuned .keras model instead of --weights; its "
                        "class names are used")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine "
                        "only; 0.0.0.0 for every interface, with an API key)")
    parser.add_argument("--port", type=_port, default=8501,
                        help="port (default: 8501, TensorFlow Serving's REST port; 0: "
                        "any free port, named in the ready line)")
    parser.add_argument("--name", default="xception",
                        help="the model's name in the routes (default: xception)")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16"),
                        default="auto",
                        help="compute precision (default: auto: bfloat16 only where "
                        "the CPU computes it natively, else float32)")
    parser.add_argument("--max-batch-size", type=int_from_1_to(MAX_BATCH_SIZE), default=8,
                        metavar="N",
                        help=f"images per model call, 1 to {MAX_BATCH_SIZE} (default: 8)")
    parser.add_argument("--batch-wait-ms", type=_seconds, default=5.0, metavar="MS",
                        help="how long a batch waits for more images after its first "
                        "(default: 5)")
    parser.add_argument("--max-queue", type=positive_int, default=64, metavar="N",
                        help="images waiting for the model, at most; more get 503 "
                        "with Retry-After (default: 64; also the most per request)")
    parser.add_argument("--max-body-mb", type=_positive_number, default=20.0, metavar="MB",
                        help="the largest request body, in MiB (default: 20); larger "
                        "gets 413")
    parser.add_argument("--body-timeout", type=_positive_number, default=30.0,
                        metavar="S",
                        help="how long to wait for the next part of a request body "
                        "still arriving (default: 30); then 408")
    parser.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                        help="refuse images larger than N pixels (default: "
                        "$KERAS_XCEPTION_MAX_PIXELS, else 178956970)")
    parser.add_argument("--api-key-file", metavar="FILE",
                        help=f"require 'Authorization: Bearer KEY' on every route but "
                        f"health and the page, KEY being this file's first line "
                        f"(default: ${API_KEY_ENV} if set, else no key)")
    parser.add_argument("--grace-period", type=_seconds, default=20.0, metavar="S",
                        help="on SIGTERM or Ctrl-C, how long requests in flight may "
                        "take to finish (default: 20)")
    parser.add_argument("--engine", choices=tuple(ENGINES), default="local",
                        help="local: this process (default); ray: Ray Serve")
    parser.add_argument("--address", default=None,
                        help="--engine ray: the Ray cluster to join (default: start "
                        "one on this machine, on loopback)")
    parser.add_argument("--replicas", type=positive_int, default=None, metavar="N",
                        help="--engine ray: model replicas (default: 1)")
    parser.set_defaults(run=run)


def _api_key(path):
    """The key from `path` (its first line) or the environment, or `None`."""
    from keras_xception.errors import ConfigError

    if path is None:
        key = os.environ.get(API_KEY_ENV, "").strip()
        return key or None
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            key = f.readline().strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise ConfigError(f"cannot read --api-key-file {path!r}: {reason}") from None
    if not key:
        raise ConfigError(f"--api-key-file {path!r} is empty; its first line is the key")
    return key


def _engine(args):
    """The engine's module, checked before any work."""
    from keras_xception.checks import require
    from keras_xception.errors import ConfigError

    if args.engine != "ray":
        if args.address is not None or args.replicas is not None:
            given = "--address" if args.address is not None else "--replicas"
            raise ConfigError(f"{given} is for --engine ray. Received: --engine {args.engine}")
        return importlib.import_module(ENGINES[args.engine])
    require("ray", "--engine ray")
    from keras_xception.batch.ray_engine import check_address

    check_address(args.address)  # Before any work: Ray itself retries for minutes.
    return importlib.import_module(ENGINES["ray"])


def run(args) -> int:
    from keras_xception.checks import require
    from keras_xception.images import max_pixels_limit
    from keras_xception.serve.service import Settings, open_model

    require("serve", "keras-xception serve")
    key = _api_key(args.api_key_file)
    settings = Settings(name=args.name, max_batch_size=args.max_batch_size,
                        batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
                        max_body_mb=args.max_body_mb, api_key=key,
                        body_timeout_s=args.body_timeout)
    max_pixels = max_pixels_limit(args.max_pixels)
    engine = _engine(args)
    options = {}
    if args.engine == "ray":
        options = {"address": args.address, "replicas": args.replicas}
    from keras_xception.serve.local import bind, is_loopback

    sock = bind(args.host, args.port) if args.engine == "local" else None
    given = args.model if args.model is not None else args.weights
    source = open_model(given, progress=sys.stderr)
    if key is None and not is_loopback(args.host):
        print(f"warning: serving on {args.host} without an API key: anyone who can "
              f"reach this address can use the model; set --api-key-file or "
              f"{API_KEY_ENV}", file=sys.stderr, flush=True)

    def ready(url):
        print(f"serving {settings.name} on {url}", file=sys.stderr, flush=True)

    def stopping():
        print(f"stopping: finishing the requests in flight (at most "
              f"{args.grace_period:g} s)", file=sys.stderr, flush=True)

    engine.run(source, settings, host=args.host, port=args.port,
               precision=args.precision, max_pixels=max_pixels,
               grace_s=args.grace_period, on_ready=ready, on_stop=stopping,
               **({"sock": sock} if sock is not None else options))
    return 0
