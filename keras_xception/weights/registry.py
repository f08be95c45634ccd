"""The pretrained weight files, each declared once.

Everything else (the downloader, the model builder, the command line, the
manifest in the top-level `weights/` folder) reads these declarations; no other
file repeats a URL, a file name or a hash.
"""

from __future__ import annotations

import dataclasses
import json

from keras_xception import architecture
from keras_xception.errors import WeightsError

_OFFICIAL_BASE = (
    "https://storage.googleapis.com/tensorflow/keras-applications/xception/"
)
_GITHUB_BASE = (
    "https://github.com/fchollet/deep-learning-models/releases/download/v0.4/"
)
_SOURCE = (
    "Keras Applications (keras.applications.Xception): trained on ImageNet "
    "(ILSVRC 2012) by the Keras authors, first released in "
    "fchollet/deep-learning-models v0.4"
)
# The deep-learning-models README states that the Xception weights were
# trained by the Keras authors and are released under the MIT license.
_LICENSE = "MIT (per fchollet/deep-learning-models and Keras Applications)"
_ACCURACY_SOURCE = "https://keras.io/api/applications/"


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """One published weights file.

    Attributes:
        name: Short name of the variant, e.g. `"imagenet_notop"`.
        include_top: Whether the file holds the `predictions` classifier.
        fname: The official file name, as Keras caches it.
        urls: Where to download it, in the order to try.
        md5: The md5 hex digest Keras publishes for the file.
        sha256: The sha256 hex digest, or `None` until a copy has been checked
            against `md5` and its sha256 recorded here.
        params: Number of weights in the model this file fills.
        input_size: Height and width of the images it was trained on.
        preprocessing: Input scaling: `"tf"` maps pixels to `x / 127.5 - 1`.
        top1: Published ImageNet validation top-1 accuracy.
        top5: Published ImageNet validation top-5 accuracy.
        accuracy_source: Where `top1` and `top5` are published.
        source: Who trained and published the file.
        license: The file's license, with where it is stated.
    """

    name: str
    include_top: bool
    fname: str
    urls: tuple[str, ...]
    md5: str
    sha256: str | None
    params: int
    input_size: int
    preprocessing: str
    top1: float
    top5: float
    accuracy_source: str
    source: str
    license: str

    @property
    def file_hash(self) -> str:
        """The strongest digest recorded: sha256 when known, else md5."""
        return self.sha256 or self.md5


def _imagenet(include_top: bool, fname: str, md5: str, params: int) -> WeightsFile:
    return WeightsFile(
        name="imagenet" if include_top else "imagenet_notop",
        include_top=include_top,
        fname=fname,
        urls=(_OFFICIAL_BASE + fname, _GITHUB_BASE + fname),
        md5=md5,
        # Recorded only once a downloaded copy has been verified against the
        # published md5; no copy of these files has been checked here yet.
        sha256=None,
        params=params,
        input_size=architecture.DEFAULT_SIZE,
        preprocessing="tf",
        top1=0.790,
        top5=0.945,
        accuracy_source=_ACCURACY_SOURCE,
        source=_SOURCE,
        license=_LICENSE,
    )


WEIGHTS = (
    _imagenet(
        True,
        "xception_weights_tf_dim_ordering_tf_kernels.h5",
        md5="0a58e3b7378bc2990ea3b43d5981f1f6",
        params=22_910_480,
    ),
    _imagenet(
        False,
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        md5="b0042744bf5b25fce3cb969f33bebb97",
        params=20_861_480,
    ),
)


def get(include_top: bool = True) -> WeightsFile:
    """The ImageNet weights file for a variant.

    Args:
        include_top: `True` for the file with the 1000-class classifier,
            `False` for the feature extractor only.

    Returns:
        The `WeightsFile` declaration.

    Raises:
        WeightsError: If `include_top` is not a bool.
    """
    if not isinstance(include_top, bool):
        raise WeightsError(
            f"`include_top` must be True or False. Received: include_top={include_top!r}"
        )
    for entry in WEIGHTS:
        if entry.include_top == include_top:
            return entry
    raise WeightsError(f"No weights file is declared for include_top={include_top}.")


def by_fname(fname: str) -> WeightsFile | None:
    """The declaration whose official file name is `fname`, or `None`."""
    for entry in WEIGHTS:
        if entry.fname == fname:
            return entry
    return None


def by_url(url: str) -> WeightsFile | None:
    """The declaration that lists `url` among its download URLs, or `None`."""
    for entry in WEIGHTS:
        if url in entry.urls:
            return entry
    return None


def manifest() -> dict:
    """The declarations as plain JSON-ready data (`weights/manifest.json`)."""
    files = []
    for entry in WEIGHTS:
        record = dataclasses.asdict(entry)
        record["urls"] = list(entry.urls)
        files.append(record)
    return {
        "model": "Xception",
        "generated_by": "scripts/write_weights_manifest.py",
        "files": files,
    }


def manifest_json() -> str:
    """`manifest()` as the exact text of `weights/manifest.json`."""
    return json.dumps(manifest(), indent=2, ensure_ascii=False) + "\n"


def manifest_table() -> str:
    """A Markdown table of the files, for `weights/README.md`."""
    rows = [
        "| File | Variant | Parameters | Input | Top-1 | Top-5 | md5 |",
        "| --- | --- | ---: | --- | ---: | ---: | --- |",
    ]
    for entry in WEIGHTS:
        variant = "with classifier top" if entry.include_top else "no top"
        rows.append(
            f"| `{entry.fname}` | {variant} | {entry.params:,} | "
            f"{entry.input_size}x{entry.input_size}, `{entry.preprocessing}` | "
            f"{entry.top1:.3f} | {entry.top5:.3f} | `{entry.md5}` |"
        )
    return "\n".join(rows) + "\n"
