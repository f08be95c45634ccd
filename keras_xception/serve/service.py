"""The model behind the server: one `Service` per process or Ray Serve replica.

    from keras_xception.serve.service import Service, Settings, open_model

    src = open_model("imagenet")                 # checked, no TensorFlow yet
    service = Service(src, precision="float32")  # the model and its fast predictor
    service.warm_up(8)
    outputs = service.predict(pixels)            # (N, H, W, 3) in [0, 255] -> (N, K)

A service knows the model (`keras_xception.source`, the one model source),
turns what a request carries (an encoded image file's bytes, or a nested
list or array of RGB pixels) into the pixels the model takes, and predicts
a batch. It holds no queue and knows no HTTP: `batcher.Batcher` (or Ray
Serve's `@serve.batch`) batches calls of `predict`, and `app.build_app`
speaks the protocols. A `Source` is small and picklable, so a Ray replica
builds its own `Service` from the one the driver opened.

What the server answers, per image:

- a model with a classifier: `probabilities` (float32, one per class, by
  the source's score rule, as `classify` gives them);
- a model without one (weights without the top): `embedding`, the pooled
  Xception features (float32, 2048), as `embed` gives them.
"""

from __future__ import annotations

import dataclasses
import io
import sys

import numpy as np

from keras_xception.checks import MAX_BATCH_SIZE, one_line, positive_int
from keras_xception.errors import ConfigError, XceptionError

PROBABILITIES = "probabilities"
EMBEDDING = "embedding"


class RequestError(XceptionError):
    """A request the server refuses: its HTTP status and a one-line reason.

    Attributes:
        status: The HTTP status (400 unless said otherwise).
        headers: Extra response headers (`Retry-After`, `Allow`).
    """

    def __init__(self, message, status=400, headers=None):
        super().__init__(one_line(message, 500))
        self.status = status
        self.headers = dict(headers or {})


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the server is told besides its model (the `serve` command's options).

    Attributes:
        name: The model's name in every route (`/v1/models/NAME...`).
        max_batch_size: Images per model call, at most.
        batch_wait_ms: How long a batch waits for more images after its
            first, at most.
        max_queue: Images waiting for the model, at most; a request that
            would pass it gets 503 with `Retry-After` at once. Also the most
            images one request may hold.
        max_body_mb: The largest request body, in MiB (decimal fractions
            allowed); a larger one gets 413.
        api_key: The key every route but health and the page requires
            (`Authorization: Bearer KEY`), or `None` for none.
        retry_after_s: The `Retry-After` a 503 carries, in seconds.
        body_timeout_s: How long the server waits for the next part of a
            request body that is still arriving; then 408.
    """

    name: str = "xception"
    max_batch_size: int = 8
    batch_wait_ms: float = 5.0
    max_queue: int = 64
    max_body_mb: float = 20.0
    api_key: str | None = dataclasses.field(default=None, repr=False)
    retry_after_s: int = 1
    body_timeout_s: float = 30.0

    def __post_init__(self):
        positive_int(self.max_batch_size, "max_batch_size", maximum=MAX_BATCH_SIZE)
        positive_int(self.max_queue, "max_queue")
        if not isinstance(self.name, str) or not self.name or any(
                c in self.name for c in "/:?#% ") or not self.name.isprintable():
            raise ConfigError(
                "The model's name must be a non-empty word without '/', ':', "
                f"'?', '#', '%' or spaces. Received: name={self.name!r}"
            )
        for field, value in (("batch_wait_ms", self.batch_wait_ms),
                             ("max_body_mb", self.max_body_mb),
                             ("body_timeout_s", self.body_timeout_s)):
            positive = field != "batch_wait_ms"
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not np.isfinite(value) or value < 0 \
                    or (positive and value == 0):
                raise ConfigError(
                    f"`{field}` must be a {'positive' if positive else 'non-negative'} "
                    f"number. Received: {field}={value!r}"
                )

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


def open_model(given, *, progress=sys.stderr):
    """The checked `Source` the server serves: `keras_xception.source.open_source`.

    `"imagenet"` is the model with its classifier; a weights file without
    the top, or a `.keras` model without a classifier, is served for its
    embedding.
    """
    from keras_xception import source

    return source.open_source(given, need_top=given == source.IMAGENET,
                              progress=progress)


class Service:
    """A model ready to serve: its source, rules and fast predictor.

    Args:
        source: The `keras_xception.source.Source` (`open_model`).
        precision, runtime: Passed to `optimize_for_inference`.
        max_pixels: The pixel limit for decoding (`None`: the default,
            `keras_xception.images.max_pixels_limit`).

    Attributes:
        source: The source.
        loaded: Its `Loaded` model (input and score rules).
        output_name: `"probabilities"` or `"embedding"`.
        output_size: Classes, or the embedding's width.
        input_size: `(height, width)` of the pixels the model takes.
        max_pixels: The pixel limit in force.
    """

    def __init__(self, source, *, precision="auto", runtime="auto", max_pixels=None):
        from keras_xception.images import max_pixels_limit
        from keras_xception.inference import optimize_for_inference

        self.source = source
        self.max_pixels = max_pixels_limit(max_pixels)
        embedding = not source.has_top
        self.loaded = source.load(embed=embedding)
        self.output_name = EMBEDDING if embedding else PROBABILITIES
        self.output_size = int(self.loaded.model.outputs[0].shape[-1]) if embedding \
            else int(self.loaded.classes)
        self.input_size = tuple(source.input_size)
        self.predictor = optimize_for_inference(self.loaded.model, precision,
                                                runtime=runtime)

    # --- the model -------------------------------------------------------------

    def predict(self, pixels) -> np.ndarray:
        """`(N, K)` float32 outputs for `pixels` (`(N, H, W, 3)`, RGB in [0, 255])."""
        x = self.loaded.prepare(np.asarray(pixels, np.float32))
        outputs = self.predictor.predict(x, batch_size=len(x), verbose=0)
        if self.output_name == EMBEDDING:
            return np.asarray(outputs, np.float32)
        return self.loaded.scores(outputs)

    def warm_up(self, batch_size: int) -> None:
        """One batch of grey images through `predict`: the model is compiled
        and its first-call costs paid before the server reports ready."""
        self.predict(np.full((batch_size, *self.input_size, 3), 128, np.float32))

    def describe(self) -> dict:
        """What `optimize_for_inference` chose (runtime, precision, threads)."""
        return self.predictor.describe()

    # --- what a request carries --------------------------------------------------

    def decode(self, data, label) -> np.ndarray:
        """An encoded image file's bytes as `(H, W, 3)` float32 pixels.

        Through `keras_xception.images.decode_bytes`, the package's one
        decode pipeline (orientation, colour modes, resize, pixel limit).

        Raises:
            ImageError: One line naming `label` (`"instance 2"`).
        """
        from keras_xception.images import decode_bytes

        return decode_bytes(data, self.input_size, max_pixels=self.max_pixels, name=label)

    def check_pixels(self, pixels, label) -> np.ndarray:
        """`pixels` (nested lists or an array of RGB values in [0, 255]) as
        `(H, W, 3)` float32, checked.

        Raises:
            RequestError: Naming `label` and what is wrong: not numbers, not
                the model's input shape, not finite, outside [0, 255].
        """
        height, width = self.input_size
        want = f"({height}, {width}, 3) RGB pixels from 0 to 255"
        try:
            array = np.asarray(pixels)
        except (ValueError, TypeError):
            array = None
        if array is None or array.dtype.kind not in "iuf":
            raise RequestError(f"{label} is not an image: give {want}, or an encoded "
                               "image file")
        if array.shape != (height, width, 3):
            raise RequestError(f"{label} has shape {tuple(array.shape)}; this model "
                               f"takes {want}")
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise RequestError(f"{label} holds NaN or infinite pixels; give {want}")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 255:
            raise RequestError(f"{label} has pixels from {low:g} to {high:g}; give {want}")
        return array

    def pixels(self, items) -> np.ndarray:
        """`(N, H, W, 3)` float32 pixels of `items`, each `(label, payload)`.

        A payload is an encoded image file (`bytes`) or pixels (anything
        `check_pixels` takes).
        """
        out = np.empty((len(items), *self.input_size, 3), np.float32)
        for i, (label, payload) in enumerate(items):
            if isinstance(payload, (bytes, bytearray, memoryview)):
                out[i] = self.decode(payload, label)
            else:
                out[i] = self.check_pixels(payload, label)
        return out

    # --- classes and Grad-CAM ------------------------------------------------------

    def check_top(self, top=None) -> int:
        """The query parameter `top` (its text or an int; `None` for 5) checked
        against the model's classes.

        Raises:
            ConfigError: If the model has no classes.
            RequestError: If `top` is not an integer from 1 to the classes
                (naming it as the query parameter: "Received: top='0'").
        """
        from keras_xception.checks import MAX_TOP

        default = self.source.check_top(None)  # A model without classes: one line.
        if top is None:
            return default
        limit = min(self.source.classes or MAX_TOP, MAX_TOP)
        try:
            value = int(str(top).strip())
        except ValueError:
            value = 0
        if not 1 <= value <= limit:
            what = "the model's classes" if self.source.classes == limit else "the most shown"
            raise RequestError(f"top must be an integer from 1 to {limit}, {what}. "
                               f"Received: top={str(top)!r}")
        return value

    def top(self, probabilities, top) -> list[dict]:
        """The `top` classes of one row, best first, as `:classify` answers them."""
        from keras_xception.pipelines import top_predictions

        return [{"class_index": p.class_index, "class_name": p.name, "score": p.score}
                for p in top_predictions(self.source, probabilities[None], top)[0]]

    def check_explain(self) -> None:
        """Whether Grad-CAM can explain this model, before any image is read.

        Raises:
            ConfigError: If the model has no classes.
            RequestError: 501 for an int8 model (no gradients to follow).
        """
        from keras_xception.source import INT8

        self.source.check_top(None)  # A model without classes: one line.
        if self.source.kind == INT8:
            raise RequestError("this model is int8: Grad-CAM needs the float32 model; "
                               "serve the float32 model to explain", 501)

    def explain(self, data, class_text=None, *, alpha=0.4, label="the image"):
        """The Grad-CAM overlay of an encoded image, as a PNG at the photo's size.

        The same `keras_xception.explain.explain_batch` and `overlay` as
        `keras-xception explain`, on the model (not the fast predictor).

        Args:
            data: The image file's bytes.
            class_text: The class to explain (an index, a name or a synset),
                or `None` for the top class.
            alpha: The heatmap's weight over the photo.
            label: How messages name the image.

        Returns:
            `(png_bytes, class_index, score)`.

        Raises:
            ConfigError: If the model has no classes or `class_text` names none.
            RequestError: If the model is int8 (`check_explain`).
            ImageError: If the image cannot be decoded.
        """
        from PIL import Image

        from keras_xception.explain import explain_batch, logits_to_outputs, overlay
        from keras_xception.images import decode_bytes
        from keras_xception.pipelines import resolve_class

        self.check_explain()
        index = None
        if class_text is not None:
            index = resolve_class(class_text, self.source, self.loaded.classes,
                                  option="class")
        pixels = self.decode(data, label)
        photo = decode_bytes(data, None, max_pixels=self.max_pixels, dtype="uint8",
                             name=label)
        model = self.loaded.model
        found = explain_batch(model, self.loaded.prepare(pixels[None]), index)
        scores = self.loaded.scores(logits_to_outputs(model, found.logits))
        index = int(found.class_indices[0])
        overlay(photo, found.heatmaps[0], alpha, out=photo)
        png = io.BytesIO()
        Image.fromarray(photo, "RGB").save(png, format="PNG")
        return png.getvalue(), index, float(scores[0, index])
