"""The model a batch job runs, and the result table it gives per batch.

A `ModelSpec` says what to build and is small and picklable, so each of
Ray's model actors builds its own copy from it; `Predictor` is the built
model: it takes a batch of decoded images and returns the result columns.

- `embed`: the 2048-d output of the Xception base after global average
  pooling, i.e. `Xception(include_top=False, pooling="avg")`. `--weights`
  may be a no-top or a full weights file (the base's weights are used
  either way), `--model` a `.keras` classifier (its Xception base is used).
- `classify`: the top-k classes of a model with a classifier: ImageNet
  weights with the top (`--weights`), or a fine-tuned `.keras` classifier
  (`--model`), whose class names come from the file.

Images are fed as `classify` feeds them: decoded by
`keras_xception.images.decode`, then `keras_xception.preprocess_input`,
except for a `.keras` classifier with its own `preprocess` rescaling layer
(the ones `build_classifier` makes), which takes the pixels as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os

import numpy as np

from keras_xception.errors import ConfigError

EMBED = "embed"
CLASSIFY = "classify"
KINDS = (EMBED, CLASSIFY)
EMBEDDING_SIZE = 2048


def file_sha256(path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a job's model is; enough to build it anywhere.

    Attributes:
        kind: `"embed"` or `"classify"`.
        weights: A local weights file, or `None` when `model_path` is given.
        model_path: A `.keras` model file, or `None`.
        precision: Passed to `optimize_for_inference(precision=...)`, or
            `None` for its default.
        top: Classes per image (`classify`).
        sha256: Digest of the weights or model file.
    """

    kind: str
    weights: str | None = None
    model_path: str | None = None
    precision: str | None = None
    top: int = 5
    sha256: str = ""

    def identity(self) -> dict:
        """What makes two jobs' results comparable (checked on a rerun)."""
        source = self.model_path or self.weights
        return {
            "kind": self.kind,
            "model" if self.model_path else "weights": os.path.basename(source or ""),
            "sha256": self.sha256,
            "precision": self.precision,
            **({"top": self.top} if self.kind == CLASSIFY else {}),
        }


def result_schema(kind):
    """The Arrow schema of a result file."""
    import pyarrow as pa

    from keras_xception.batch.paths import bytes_field

    if kind == EMBED:
        return pa.schema([
            ("path", pa.string()),
            ("embedding", pa.list_(pa.float32(), EMBEDDING_SIZE)),
            bytes_field(),
        ])
    return pa.schema([
        ("path", pa.string()),
        ("class_index", pa.list_(pa.int32())),
        ("class_name", pa.list_(pa.string())),
        ("score", pa.list_(pa.float32())),
        bytes_field(),
    ])


def column_text(path) -> str:
    """A path as Parquet text (`batch.paths.text`; `path_bytes` keeps it exactly)."""
    from keras_xception.batch.paths import text

    return text(path)


def _optimize(model, precision):
    from keras_xception.inference import optimize_for_inference

    if "precision" in inspect.signature(optimize_for_inference).parameters:
        if precision is None:
            return optimize_for_inference(model)
        return optimize_for_inference(model, precision=precision)
    if precision not in (None, "float32"):
        raise ConfigError(
            "This version of keras_xception runs the model in float32 only. "
            f"Received: --precision {precision!r}"
        )
    return optimize_for_inference(model)


def _has_own_preprocessing(model) -> bool:
    try:
        layer = model.get_layer("preprocess")
    except ValueError:
        return False
    return type(layer).__name__ == "Rescaling"


def _input_size(model):
    from keras_xception.architecture import DEFAULT_SIZE

    shape = model.input_shape
    height, width = shape[1], shape[2]
    return (height or DEFAULT_SIZE, width or DEFAULT_SIZE)


class Predictor:
    """A built model: decoded images in, result columns out.

    Args:
        spec: The `ModelSpec` to build.

    Attributes:
        image_size: `(height, width)` images are resized to.
        preprocess: Applied to each float32 batch in [0, 255] before the
            model, or `None`.
    """

    def __init__(self, spec: ModelSpec):
        import keras

        from keras_xception.preprocessing import preprocess_input

        self.spec = spec
        self.class_names = None
        self.preprocess = preprocess_input
        if spec.model_path is not None:
            from keras_xception.training.saving import load_classifier

            loaded = load_classifier(spec.model_path)
            if spec.kind == EMBED:
                from keras_xception.training.classifier import base_of

                base = base_of(loaded)
                pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base.output)
                model = keras.Model(base.input, pooled, name="xception_embed")
            else:
                model = loaded
                self.class_names = getattr(loaded, "class_names", None)
                if _has_own_preprocessing(loaded):
                    self.preprocess = None
        else:
            from keras_xception.model import Xception
            from keras_xception.weights.validate import inspect as inspect_weights

            summary = inspect_weights(spec.weights)
            if spec.kind == EMBED:
                if summary.include_top:
                    full = Xception(weights=spec.weights, classes=summary.classes)
                    model = keras.Model(full.input, full.get_layer("avg_pool").output,
                                        name="xception_embed")
                else:
                    model = Xception(include_top=False, pooling="avg",
                                     weights=spec.weights)
            else:
                if not summary.include_top:
                    from keras_xception.errors import WeightsError

                    raise WeightsError(
                        f"{spec.weights} holds Xception weights without the "
                        "classifier top, which classify needs: pass weights "
                        "with the top, or a fine-tuned model with --model."
                    )
                model = Xception(weights=spec.weights, classes=summary.classes)
        units = model.outputs[0].shape[-1]
        if spec.kind == EMBED and units != EMBEDDING_SIZE:
            raise ConfigError(
                f"The embedding model gives {units} values per image, not "
                f"{EMBEDDING_SIZE}. Received: {spec.model_path or spec.weights}"
            )
        if spec.kind == CLASSIFY:
            if self.class_names is None and units == 1000:
                from keras_xception.preprocessing import imagenet_classes

                self.class_names = tuple(name for _, name in imagenet_classes())
            elif self.class_names is None:
                self.class_names = tuple(str(i) for i in range(units))
            if spec.top > units:
                raise ConfigError(
                    f"--top must be at most the model's {units} classes. "
                    f"Received: --top {spec.top}"
                )
        self.image_size = _input_size(model)
        self.model = _optimize(model, spec.precision)

    def __call__(self, images: np.ndarray) -> dict:
        """The result columns (without `path`) for a batch of images in [0, 255].

        Args:
            images: float32, `(n, height, width, 3)`, not yet preprocessed.

        Returns:
            For `embed`: `{"embedding": float32 (n, 2048)}`; for `classify`:
            `{"class_index": int32 (n, top), "class_name": [[str]],
            "score": float32 (n, top)}`.
        """
        if self.preprocess is not None:
            images = self.preprocess(images)
        outputs = np.asarray(self.model.predict(images, batch_size=len(images)),
                             dtype=np.float32)
        if self.spec.kind == EMBED:
            return {"embedding": outputs}
        order = np.argsort(-outputs, axis=1, kind="stable")[:, : self.spec.top]
        scores = np.take_along_axis(outputs, order, axis=1)
        names = [[self.class_names[i] for i in row] for row in order]
        return {"class_index": order.astype(np.int32), "class_name": names,
                "score": scores}


def result_table(kind, paths, columns):
    """An Arrow table of results in `result_schema(kind)`.

    Args:
        kind: `"embed"` or `"classify"`.
        paths: The rows' paths.
        columns: What `Predictor.__call__` returned for them (or the
            concatenation of several such results).
    """
    import pyarrow as pa

    from keras_xception.batch.paths import bytes_array, text_array

    schema = result_schema(kind)
    path_column = text_array(paths)
    path_bytes = bytes_array(paths)
    if kind == EMBED:
        values = np.ascontiguousarray(columns["embedding"], dtype=np.float32).reshape(-1)
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(values, pa.float32()),
                                                      EMBEDDING_SIZE)
        return pa.Table.from_arrays([path_column, embedding, path_bytes], schema=schema)
    return pa.Table.from_arrays(
        [
            path_column,
            pa.array([list(map(int, r)) for r in columns["class_index"]],
                     schema.field("class_index").type),
            pa.array([list(r) for r in columns["class_name"]],
                     schema.field("class_name").type),
            pa.array([np.asarray(r, np.float32) for r in columns["score"]],
                     schema.field("score").type),
            path_bytes,
        ],
        schema=schema,
    )


def empty_columns(kind, top) -> dict:
    """Result columns for zero images."""
    if kind == EMBED:
        return {"embedding": np.zeros((0, EMBEDDING_SIZE), np.float32)}
    return {"class_index": np.zeros((0, top), np.int32), "class_name": [],
            "score": np.zeros((0, top), np.float32)}


def image_size(spec: ModelSpec):
    """The `(height, width)` images are resized to for `spec`, without building it.

    Weights give the standard Xception input; a `.keras` model file says its
    input shape in its `config.json`.
    """
    import json
    import zipfile

    from keras_xception.architecture import DEFAULT_SIZE

    if spec.model_path is None:
        return (DEFAULT_SIZE, DEFAULT_SIZE)
    try:
        with zipfile.ZipFile(spec.model_path) as archive:
            config = json.loads(archive.read("config.json"))
        layers = config["config"]["layers"]
        shape = next(layer["config"]["batch_shape"] for layer in layers
                     if layer["class_name"] == "InputLayer")
        height, width = shape[1], shape[2]
    except (OSError, KeyError, StopIteration, ValueError, TypeError, IndexError,
            zipfile.BadZipFile):
        return (DEFAULT_SIZE, DEFAULT_SIZE)
    return (height or DEFAULT_SIZE, width or DEFAULT_SIZE)
