"""Writes weights/manifest.json and the file tables in weights/README.md and README.md.

Both are generated from `keras_xception.weights.registry`, the one place the
weight files are declared; `tests/test_weights_download.py` fails when the
committed copies differ from what the registry gives.

    python scripts/write_weights_manifest.py          # rewrite both
    python scripts/write_weights_manifest.py --check  # exit 1 if out of date
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keras_xception.weights import registry  # noqa: E402

MANIFEST = ROOT / "weights" / "manifest.json"
READMES = (ROOT / "weights" / "README.md", ROOT / "README.md")
BEGIN = "<!-- BEGIN GENERATED TABLE: scripts/write_weights_manifest.py -->\n"
END = "<!-- END GENERATED TABLE -->\n"


def render_readme(path: pathlib.Path) -> str:
    """`path`'s text with the part between the markers replaced by the table."""
    text = path.read_text(encoding="utf8")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(
            f"{path} lacks the markers {BEGIN.strip()} ... {END.strip()}"
        )
    return pattern.sub(lambda _: BEGIN + registry.manifest_table() + END, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a file is out of date"
    )
    args = parser.parse_args(argv)
    wanted = {MANIFEST: registry.manifest_json()}
    wanted.update({path: render_readme(path) for path in READMES})
    stale = [
        path
        for path, text in wanted.items()
        if not path.exists() or path.read_text(encoding="utf8") != text
    ]
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(ROOT)}", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path], encoding="utf8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
