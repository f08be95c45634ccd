"""Writes keras_xception/data/imagenet_class_index.json.

The 1000 ImageNet (synset, name) pairs are taken from keras-hub
(`keras_hub/src/utils/imagenet/imagenet_utils.py`, `IMAGENET_NAMES`), which
carries the same pairs as Keras's downloadable `imagenet_class_index.json`.
The output uses that file's format: `{"0": ["n01440764", "tench"], ...}`.

Usage:
    pip install --no-deps keras-hub
    python scripts/make_class_index.py          # write the file
    python scripts/make_class_index.py --check  # exit 1 if it differs
"""

import ast
import importlib.util
import json
import pathlib
import sys

OUT = (
    pathlib.Path(__file__).resolve().parents[1]
    / "keras_xception"
    / "data"
    / "imagenet_class_index.json"
)


def imagenet_names():
    """Reads `IMAGENET_NAMES` from keras-hub's source without importing it.

    Importing `keras_hub` pulls in its whole dependency tree (tokenizers,
    ...); the table is a plain literal, so it is parsed instead.
    """
    spec = importlib.util.find_spec("keras_hub")
    if spec is None:
        raise SystemExit("keras-hub is not installed: pip install --no-deps keras-hub")
    root = pathlib.Path(spec.submodule_search_locations[0])
    source = (root / "src" / "utils" / "imagenet" / "imagenet_utils.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "IMAGENET_NAMES" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise SystemExit("IMAGENET_NAMES not found in keras-hub's imagenet_utils.py")


def main():
    IMAGENET_NAMES = imagenet_names()
    if sorted(IMAGENET_NAMES) != list(range(1000)):
        raise SystemExit("keras-hub's IMAGENET_NAMES is not indexed 0..999")
    index = {str(i): list(IMAGENET_NAMES[i]) for i in range(1000)}
    # One class per line, so a diff of the file reads as a list of classes.
    lines = ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in index.items())
    text = "{\n" + lines + "\n}\n"
    if "--check" in sys.argv[1:]:
        if OUT.read_text() != text:
            raise SystemExit(f"{OUT} differs from keras-hub's IMAGENET_NAMES")
        print(f"{OUT} matches keras-hub's {len(index)} classes")
        return
    OUT.write_text(text)
    print(f"wrote {len(index)} classes to {OUT}")


if __name__ == "__main__":
    main()
