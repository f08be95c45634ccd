"""`keras-xception weights`: download, verify and locate the pretrained weights.

    keras-xception weights download [--include-top | --no-top | --all]
    keras-xception weights verify PATH [--include-top | --no-top]
    keras-xception weights path

Results (paths, states) go to stdout; download messages and progress to
stderr. Exit status 0 when everything is in order, 1 otherwise, with one
`error: ...` line on stderr.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

HELP = "download, verify and locate the pretrained weight files"


def _variant_flags(parser, *, with_all: bool, default_help: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--include-top",
        dest="variants",
        action="store_const",
        const=(True,),
        help="the file with the 1000-class ImageNet classifier",
    )
    group.add_argument(
        "--no-top",
        dest="variants",
        action="store_const",
        const=(False,),
        help="the file without the classifier (feature extraction, fine-tuning)",
    )
    if with_all:
        group.add_argument(
            "--all",
            dest="variants",
            action="store_const",
            const=(True, False),
            help="both files",
        )
    parser.set_defaults(variants=None)
    parser.description = (parser.description or "") + default_help


def _cache_dir_flag(parser) -> None:
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="base cache folder; files go to DIR/models (default: "
        "$KERAS_HOME/models or ~/.keras/models, as keras.applications)",
    )


def add_parser(subparsers) -> None:
    """Adds the `weights` subcommand to the top-level parser."""
    parser = subparsers.add_parser(
        "weights",
        help=HELP,
        description=f"{HELP[0].upper()}{HELP[1:]}. Environment: "
        "KERAS_XCEPTION_WEIGHTS_URL (mirror base URL), KERAS_XCEPTION_OFFLINE=1 "
        "(never download), KERAS_HOME (cache location), HTTPS_PROXY.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    download = actions.add_parser(
        "download",
        help="download the ImageNet files into the cache and verify them",
        description="Download the official ImageNet weights into the Keras "
        "cache (or find them there) and check their md5. ",
    )
    _variant_flags(download, with_all=True, default_help="Default: --include-top.")
    _cache_dir_flag(download)
    download.add_argument(
        "--no-progress",
        action="store_true",
        help="do not report progress (it goes to stderr)",
    )

    verify = actions.add_parser(
        "verify",
        help="check that a file holds complete Xception weights",
        description="Check that PATH is a complete HDF5 file whose layout "
        "(legacy Keras 2 or Keras 3 .weights.h5) and every weight shape fit "
        "Xception. A file named like an official file is also checked against "
        "its published md5. ",
    )
    verify.add_argument("path", metavar="PATH", help="the weights file")
    _variant_flags(verify, with_all=False, default_help="Default: either variant.")
    verify.add_argument(
        "--hash",
        metavar="HEX",
        dest="file_hash",
        type=_digest,
        help="expected md5 or sha256 hex digest of the file",
    )

    path = actions.add_parser(
        "path",
        help="show the cache folder and the state of each file in it",
        description="Show where the weights are cached and each official "
        "file's state (missing, ok, or what is wrong). Exit status 1 when a "
        "file is present but bad.",
    )
    _cache_dir_flag(path)
    parser.set_defaults(run=run)


def _check_cache_dir(cache_dir) -> None:
    """Fails at once when `--cache-dir` cannot hold the cache folder."""
    if cache_dir is not None:
        from keras_xception import fileio
        from keras_xception.weights import cache

        fileio.check_parent(pathlib.Path(cache_dir) / cache.SUBDIR, what="--cache-dir")


def _download(args) -> int:
    from keras_xception.weights import fetch

    _check_cache_dir(args.cache_dir)
    progress = False if args.no_progress else sys.stderr
    for include_top in args.variants or (True,):
        print(fetch(include_top, cache_dir=args.cache_dir, progress=progress), flush=True)
    return 0


def _digest(text: str) -> str:
    """An md5 or sha256 hex digest, for `--hash`."""
    from keras_xception.errors import WeightsError
    from keras_xception.weights import integrity

    try:
        integrity.hash_algorithm(text)
    except WeightsError:
        raise argparse.ArgumentTypeError(
            "must be an md5 (32 hex digits) or sha256 (64 hex digits) digest. "
            f"Received: --hash {text}") from None
    return text


def _verify(args) -> int:
    from keras_xception.errors import ConfigError
    from keras_xception.weights import registry, validate

    file_hash = args.file_hash
    entry = registry.by_fname(pathlib.Path(args.path).name)
    if file_hash is None and entry is not None:
        file_hash = entry.file_hash
    include_top = args.variants[0] if args.variants else None
    validate.verify(args.path, file_hash=file_hash)  # Either variant, first.
    summary = validate.inspect(args.path)
    has_top = summary.include_top
    if include_top is not None and has_top != include_top:  # In the command's terms.
        flag = "--include-top" if include_top else "--no-top"
        raise ConfigError(
            f"{args.path}: this file {'has the' if has_top else 'has no'} classifier "
            f"top, and {flag} asks for one {'without' if has_top else 'with'} "
            f"it. Leave out {flag} to accept either.")
    print(f"ok: {summary.path}")
    print(f"  {summary.describe()}")
    if file_hash is not None:
        source = "given" if args.file_hash else f"published for {entry.fname}"
        print(f"  digest matches the {source} one: {file_hash.lower()}")
    return 0


def _state(path, entry) -> tuple[bool, str]:
    """`(ok, words)` for one cached file."""
    from keras_xception.errors import WeightsError
    from keras_xception.weights import integrity, validate, verified

    problem = integrity.content_problem(path)
    if problem is not None:
        return False, f"bad: {problem.what}"
    mismatch = verified.mismatch(path, entry.file_hash)
    if mismatch is not None:
        algorithm, received = mismatch
        return False, (
            f"hash mismatch: {algorithm} {received}, expected {entry.file_hash}"
        )
    try:
        validate.verify(path, include_top=entry.include_top)
    except WeightsError as err:
        return False, f"bad: {err}"
    algorithm = "sha256" if entry.sha256 else "md5"
    return True, f"ok ({algorithm} verified)"


def _path(args) -> int:
    from keras_xception.weights import cache, registry, urls
    from keras_xception.weights.cache_entry import obstacles

    folders = cache.cache_dirs(args.cache_dir)
    print(f"cache: {folders[0]}")
    if len(folders) > 1:
        print(f"  not writable; new downloads go to {folders[-1]}")
    mirror = urls.mirror_base()
    print(f"mirror ({urls.MIRROR_ENV}): {mirror or 'not set'}")
    print(f"offline ({cache.OFFLINE_ENV}): {'yes' if cache.offline() else 'no'}")
    all_ok = True
    for entry in registry.WEIGHTS:
        found = cache.cached_files(entry.fname, args.cache_dir)
        print(f"{entry.fname} ({entry.name}):")
        states = [(path, *_state(path, entry)) for path in found]
        # A folder (or FIFO, ...) where a download would write blocks it,
        # which matters only while no copy found is ok (classify's rule).
        usable = any(ok for _, ok, _ in states)
        blocked = obstacles(folders[-1] / entry.fname)
        if not found and not blocked:
            print(f"  missing: would be downloaded to {folders[-1] / entry.fname}")
        for path, ok, words in states:
            all_ok = all_ok and ok
            print(f"  {path}: {words}")
        for path, kind in blocked:
            all_ok = all_ok and usable
            print(f"  {path}: {kind}, where a download of this file would write; "
                  + ("remove it" if not usable else "unused while the copy above is ok"))
    return 0 if all_ok else 1


def run(args: argparse.Namespace) -> int:
    """Runs `keras-xception weights ACTION`; returns the exit status."""
    return {"download": _download, "verify": _verify, "path": _path}[args.action](args)
