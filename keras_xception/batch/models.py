"""The model a batch job runs, and the result table it gives per batch.

A `ModelSpec` says what to build and is small and picklable, so each of
Ray's model actors builds its own copy from it; `Predictor` is the built
model: it takes a batch of decoded images and returns the result columns.
Both read the model through `keras_xception.source`, as every command does.

- `embed`: the 2048-d output of the Xception base after global average
  pooling. `--weights` may be a no-top or a full weights file (the base's
  weights are used either way), `--model` a `.keras` model (its Xception
  base, fed through the model's own layers before it).
- `classify`: the top-k classes of a model with a classifier: ImageNet
  weights with the top (`--weights`), or a fine-tuned `.keras` classifier
  (`--model`), whose class names come from the file. Scores are
  probabilities by `source`'s score rule.

Images are fed as every command feeds them: decoded by
`keras_xception.images.decode`, then prepared by the source's input rule
(`preprocess_input`, unless the model scales its own input).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_xception.errors import ConfigError
from keras_xception.source import Source

EMBED = "embed"
CLASSIFY = "classify"
KINDS = (EMBED, CLASSIFY)
EMBEDDING_SIZE = 2048


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a job's model is; enough to build it anywhere.

    Attributes:
        kind: `"embed"` or `"classify"`.
        source: The checked `keras_xception.source.Source`.
        precision: Passed to `optimize_for_inference(precision=...)`, or
            `None` for its default.
        top: Classes per image (`classify`), already checked against the
            model's classes.
    """

    kind: str
    source: Source
    precision: str | None = None
    top: int = 5

    @property
    def weights(self) -> str | None:
        """The weights file, or `None` for a `.keras` model."""
        return self.source.path if self.source.kind == "weights" else None

    @property
    def model_path(self) -> str | None:
        """The `.keras` model file, or `None` for weights."""
        return self.source.path if self.source.kind == "keras" else None

    def identity(self) -> dict:
        """What makes two jobs' results comparable (checked on a rerun)."""
        return {
            **self.source.identity(),
            "kind": self.kind,
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


class Predictor:
    """A built model: decoded images in, result columns out.

    Args:
        spec: The `ModelSpec` to build.

    Attributes:
        image_size: `(height, width)` images are resized to.
        score_rule: How classify's scores were made probabilities
            (`source.MODEL_SOFTMAX`, ...), `None` for `embed`.
    """

    def __init__(self, spec: ModelSpec):
        from keras_xception.inference import optimize_for_inference

        self.spec = spec
        loaded = spec.source.load(embed=spec.kind == EMBED)
        model = loaded.model
        units = model.outputs[0].shape[-1]
        if spec.kind == EMBED and units != EMBEDDING_SIZE:
            raise ConfigError(
                f"The embedding model gives {units} values per image, not "
                f"{EMBEDDING_SIZE}. Received: {spec.source.given}"
            )
        if spec.kind == CLASSIFY and spec.top > loaded.classes:
            raise ConfigError(
                f"--top must be at most the model's {loaded.classes} classes. "
                f"Received: --top {spec.top}"
            )
        self.loaded = loaded
        self.score_rule = loaded.score_rule
        self.image_size = image_size(spec)
        if spec.source.kind == "int8":  # Quantized already: it runs as it is.
            self.model = model
        elif spec.precision is None:
            self.model = optimize_for_inference(model)
        else:
            self.model = optimize_for_inference(model, precision=spec.precision)

    def __call__(self, images: np.ndarray) -> dict:
        """The result columns (without `path`) for a batch of images in [0, 255].

        Args:
            images: float32, `(n, height, width, 3)`, not yet preprocessed.

        Returns:
            For `embed`: `{"embedding": float32 (n, 2048)}`; for `classify`:
            `{"class_index": int32 (n, top), "class_name": [[str]],
            "score": float32 (n, top)}`.
        """
        images = self.loaded.prepare(images)
        outputs = np.asarray(self.model.predict(images, batch_size=len(images)),
                             dtype=np.float32)
        if self.spec.kind == EMBED:
            return {"embedding": outputs}
        probabilities = self.loaded.scores(outputs)
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, : self.spec.top]
        scores = np.take_along_axis(probabilities, order, axis=1)
        names = [[self.spec.source.class_name(i) for i in row] for row in order]
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
    """The `(height, width)` images are resized to for `spec`, without building it."""
    return spec.source.input_size
