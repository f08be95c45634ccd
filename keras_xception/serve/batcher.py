"""Dynamic batching: many requests' images, one model call at a time.

    batcher = Batcher(service.predict, max_batch_size=8, batch_wait_ms=5, max_queue=64)
    await batcher.start()
    with batcher.reserve(len(images)):         # 503 at once if the queue is full
        pixels = await decode(images)          # off the event loop
        outputs = await batcher.submit(pixels) # (N, K), in order
    await batcher.stop()                       # finishes what is queued

The rules (those of Ray Serve's `@serve.batch` and TensorFlow Serving's
batcher):

- a model call takes up to `max_batch_size` images, from one request or
  several; once the first image of a batch has arrived, the batch waits for
  more at most `batch_wait_ms` (the timer starts at the first image, so a
  lone request waits at most that long);
- one model call is in flight at a time, on one thread of its own (the
  event loop stays free to accept, decode and answer);
- at most `max_queue` images wait for the model, counting those whose
  request has been accepted and is still decoding: `reserve` refuses the
  rest at once with `QueueFull`, which the app answers with 503 and
  `Retry-After`, instead of letting clients time out;
- a request's images may be split across consecutive batches; each image's
  output comes back to its own request, in order.

`run_exclusive(fn, ...)` runs other model work (Grad-CAM) on the same
thread, so it never runs beside a batch. Everything here runs on one event
loop; only `predict` and `run_exclusive`'s function run on the model thread.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import time

import numpy as np

from keras_xception.checks import MAX_BATCH_SIZE, positive_int
from keras_xception.errors import XceptionError, counted

log = logging.getLogger("keras_xception.serve")


class QueueFull(XceptionError):
    """More images would wait for the model than the queue holds."""


class Stopped(XceptionError):
    """The batcher is stopping: it takes no new images."""


def check_room(depth: int, count: int, max_queue: int, *, stopping: bool) -> None:
    """The queue's rule, for every batcher: `count` more images may wait.

    Raises:
        Stopped: If the batcher is stopping.
        QueueFull: If `depth + count` would pass `max_queue`.
    """
    if stopping:
        raise Stopped("the server is shutting down")
    if depth + count > max_queue:
        raise QueueFull(
            f"the server is busy: {counted(depth, 'image')} waiting for the model, "
            f"and the queue holds {max_queue}; retry shortly"
        )


class _Item:
    __slots__ = ("pixels", "future", "arrived")

    def __init__(self, pixels, future, arrived):
        self.pixels = pixels
        self.future = future
        self.arrived = arrived


class Reservation:
    """Room for `count` images in the queue, held while a request decodes.

    A context manager: leaving it gives back what `Batcher.submit` did not
    use (the request failed to decode, say).
    """

    def __init__(self, batcher, count):
        self._batcher = batcher
        self.count = count

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def release(self):
        self._batcher._reserved -= self.count
        self.count = 0


class Batcher:
    """Batches `predict` calls; see the module docstring.

    Args:
        predict: `predict(pixels) -> outputs`: `(N, H, W, 3)` float32 in,
            `(N, K)` out, row for row (`Service.predict`).
        max_batch_size: Images per call, at most.
        batch_wait_ms: The longest wait for more images after a batch's
            first.
        max_queue: Images waiting, at most.
        on_batch: Called on the event loop with each batch's size, for
            metrics, or `None`.
    """

    def __init__(self, predict, *, max_batch_size=8, batch_wait_ms=5.0, max_queue=64,
                 on_batch=None):
        self._predict = predict
        self.max_batch_size = positive_int(max_batch_size, "max_batch_size",
                                           maximum=MAX_BATCH_SIZE)
        self.max_queue = positive_int(max_queue, "max_queue")
        self.wait_s = max(0.0, float(batch_wait_ms)) / 1000.0
        self._on_batch = on_batch
        self._queue: collections.deque[_Item] = collections.deque()
        self._reserved = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._model_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="keras_xception-model")

    # --- what the app calls ------------------------------------------------------

    @property
    def depth(self) -> int:
        """Images waiting: queued, or reserved by a request still decoding."""
        return len(self._queue) + self._reserved

    def reserve(self, count: int) -> Reservation:
        """Room for `count` images, or `QueueFull` at once.

        Raises:
            QueueFull: If `count` more would pass `max_queue`.
            Stopped: If the batcher is stopping.
        """
        check_room(self.depth, count, self.max_queue, stopping=self._stopping)
        self._reserved += count
        return Reservation(self, count)

    async def submit(self, pixels, reservation: Reservation | None = None) -> np.ndarray:
        """The outputs for `pixels` (`(N, H, W, 3)`), once the model has run.

        Args:
            pixels: The request's images.
            reservation: The room `reserve` gave them; `None` reserves now.

        Raises:
            QueueFull, Stopped: As for `reserve`, when no reservation is given.
            Exception: Whatever `predict` raised for a batch holding them.
        """
        if reservation is None:
            reservation = self.reserve(len(pixels))
        loop = asyncio.get_running_loop()
        futures = []
        now = loop.time()
        with reservation:
            for image in pixels:
                future = loop.create_future()
                self._queue.append(_Item(image, future, now))
                futures.append(future)
            # Queued now: no longer reserved.
            reservation.release()
        self._wakeup.set()
        rows = await asyncio.gather(*futures)
        return np.stack(rows)

    async def run_exclusive(self, fn, *args):
        """`fn(*args)` on the model thread, between batches."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._model_thread, fn, *args)

    async def start(self) -> None:
        """Starts the batching loop on the running event loop."""
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Takes no more images, runs what is queued, and stops."""
        self._stopping = True
        if self._task is not None:
            self._wakeup.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._model_thread.shutdown(wait=True)

    # --- the loop ------------------------------------------------------------------

    async def _next_batch(self) -> list[_Item]:
        loop = asyncio.get_running_loop()
        while not self._queue:
            if self._stopping:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._queue[0].arrived + self.wait_s
        while len(self._queue) < self.max_batch_size and not self._stopping:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        count = min(len(self._queue), self.max_batch_size)
        return [self._queue.popleft() for _ in range(count)]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                return  # Stopping, and nothing left.
            batch = [item for item in batch if not item.future.cancelled()]
            if not batch:
                continue
            if self._on_batch is not None:
                self._on_batch(len(batch))
            pixels = np.stack([item.pixels for item in batch])
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._model_thread, self._predict,
                                                     pixels)
            except Exception as err:  # Every request of the batch fails alike.
                log.error("the model failed on a batch of %d: %r", len(batch), err,
                          exc_info=err)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            finally:
                del pixels
            log.debug("batch of %d in %.1f ms", len(batch),
                      1000 * (time.perf_counter() - started))
            for item, row in zip(batch, outputs):
                if not item.future.done():
                    item.future.set_result(row)
