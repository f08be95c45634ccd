"""Argument checks every part of the package shares, each rule in one place.

- `positive_int`: one rule for counts and sizes (a Python or NumPy integer,
  not a bool, at least 1, optionally at most a limit);
- `one_line`: an exception's message as one line of bounded length, for the
  one-line errors the command line prints;
- `require`: an optional extra that a feature needs, named in one line
  before any work starts;
- `MAX_BATCH_SIZE` and `MAX_TOP`: the limits the commands share.

Nothing here imports Keras, TensorFlow or anything beyond NumPy, so a check
costs nothing and runs before any heavy import.
"""

from __future__ import annotations

import importlib.util
import numbers

from keras_xception.errors import ConfigError

# The largest batch a command runs: the model's activations grow with the
# batch (about 30 MiB per 299x299 image: a peak of 1.3 GiB at 8, 2.3 GiB at
# 32 and 3.7 GiB at 64, by scripts/measure_memory.py), while throughput on a
# CPU was the same at 8, 32 and 64. A larger --batch-size is lowered to this.
MAX_BATCH_SIZE = 32

# The most classes a command reports per image.
MAX_TOP = 1000

# The optional extras, by the module each one brings that a feature imports
# first. Each extra installs everything its feature needs (setup.cfg).
EXTRAS = {
    "batch": ("pyarrow",),
    "ray": ("ray", "pyarrow"),
    "openvino": ("openvino",),
    "int8": ("nncf", "openvino"),
    "onnxruntime": ("onnxruntime", "tf2onnx", "onnx"),
    "export": ("tf2onnx", "onnx"),
    "serve": ("fastapi", "uvicorn", "python_multipart", "prometheus_client"),
}


def is_int(value) -> bool:
    """Whether `value` is a Python or NumPy integer (a bool is not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value, name: str, *, maximum: int | None = None) -> int:
    """`value` as an `int`, if it is an integer from 1 to `maximum`.

    Args:
        value: What the caller gave (Python or NumPy integer).
        name: How the user named it, for the message: an option
            (`"--top"`: "--top must be ... Received: --top 0") or an argument
            (`"batch_size"`: "`batch_size` must be ... Received: batch_size=0").
        maximum: The largest value allowed, or `None`.

    Returns:
        The value as a plain `int`.

    Raises:
        ConfigError: Naming `name` and the value received.
    """
    if not is_int(value) or value < 1 or (maximum is not None and value > maximum):
        what = "a positive integer" if maximum is None else f"an integer from 1 to {maximum}"
        if name.startswith("-"):  # A command-line option.
            raise ConfigError(f"{name} must be {what}. Received: {name} {value!r}")
        raise ConfigError(f"`{name}` must be {what}. Received: {name}={value!r}")
    return int(value)


def one_line(err, limit: int = 300) -> str:
    """`err` (an exception or text) as one line of at most `limit` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def missing(extra: str) -> list[str]:
    """The modules of `extra` (a key of `EXTRAS`) that cannot be imported."""
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def install_hint(extra: str) -> str:
    """The command that installs `extra`: `pip install 'keras-xception[EXTRA]'`."""
    return f"pip install 'keras-xception[{extra}]'"


def require(extra: str, feature: str) -> None:
    """Checks that `extra` is installed, before `feature` does any work.

    Args:
        extra: A key of `EXTRAS`.
        feature: What needs it, for the message (`"embed"`, `"--engine ray"`).

    Raises:
        ConfigError: `"<feature> needs <modules>: pip install 'keras-xception[<extra>]'"`.
    """
    absent = missing(extra)
    if absent:
        raise ConfigError(
            f"{feature} needs {', '.join(absent)}, which is not installed: "
            f"{install_hint(extra)}"
        )


def require_tensorflow_backend(runtime: str, how: str) -> None:
    """Checks that Keras runs on TensorFlow, which `runtime` converts through.

    Args:
        runtime: The runtime asked for (`"openvino"`, `"onnxruntime"`).
        how: What it does through TensorFlow (`"converts the model"`).

    Raises:
        ConfigError: Naming the backend in use and the way out.
    """
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ConfigError(
            f"runtime={runtime!r} {how} through TensorFlow; use the TensorFlow "
            "backend (KERAS_BACKEND=tensorflow) or runtime='keras'. "
            f"Received: backend={backend!r}"
        )


def lift_pillow_limit() -> None:
    """Leaves the pixel limit to `keras_xception.images` alone, in this process.

    `images.decode` checks `max_pixels` (`--max-pixels`,
    `KERAS_XCEPTION_MAX_PIXELS`, else `images.MAX_PIXELS`) before decoding;
    Pillow's own process-wide limit (`PIL.Image.MAX_IMAGE_PIXELS`) would
    otherwise refuse a raised limit and warn below it. The command line and
    the batch engine's worker processes call this; a program using the
    library keeps Pillow's limit unless it calls this too.
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
