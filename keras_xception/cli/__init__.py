"""The `keras-xception` command line.

Each subcommand lives in a module of this package that defines
`add_parser(subparsers)` and `run(args) -> int`.

Exit status:

- 0: success; also when stdout is a pipe whose reader has gone
  (`keras-xception ... | head -n 1`), quietly.
- 1: an expected error, reported as one line `error: ...` on stderr without a
  traceback: a bad option or argument (`keras_xception.cli._args` types and
  argparse's own checks), any `keras_xception.errors.XceptionError`, or some
  of the inputs could not be processed (each named on stderr).
  stdout that cannot be written to (closed, a full disk) is one of these:
  `error: cannot write to stdout: <reason>`; so is a full disk, a missing
  permission or a read-only file system anywhere else (`error: <reason>
  ('<path>'): <what to do>`).
- 130: interrupted (Ctrl-C), also when a library swallowed or wrapped the
  interrupt: any failure once Ctrl-C has been pressed is reported as
  `interrupted`, and nothing more is published (`keras_xception.fileio`).

Python warnings are shown once each, as one line `warning: <message>` on
stderr.

Any other exception is a bug: it keeps its traceback (and exit status 1).
`--help` and `--version` print to stdout and exit with status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import sys

from keras_xception import tfenv
from keras_xception.cli import _runtime

# Subcommand modules, in the order `--help` lists them.
COMMANDS = ("classify", "explain", "embed", "weights", "benchmark", "export", "fine_tune",
            "serve", "quantize")

PROG = "keras-xception"


class ArgumentParser(argparse.ArgumentParser):
    """A parser whose usage errors are one line on stderr and exit status 1.

    `add_subparsers` makes its subcommands' parsers of the same class, so
    the rule holds for every command.
    """

    def error(self, message):
        message = " ".join(str(message).split())
        self.exit(1, f"error: {message} (see '{self.prog} --help')\n")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        # The innermost subcommand's parser finishes first: it names itself.
        if not hasattr(namespace, "_parser"):
            namespace._parser = self
        return namespace, extras


def build_parser() -> ArgumentParser:
    """The parser of `keras-xception` and all its subcommands."""
    from keras_xception import __version__

    parser = ArgumentParser(
        prog=PROG,
        description="Xception image models for Keras 3: classify, manage "
        "weights, benchmark, export, fine-tune and serve over HTTP.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    # Not `required`: `parse_args` reports an unknown option before a
    # missing command, as `keras-xception --frobnicate` calls for.
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"keras_xception.cli.{name}")
        module.add_parser(subparsers)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parses `argv` (default: `sys.argv[1:]`) for `main`.

    An option the command does not know is reported by that command's parser,
    so the message points at its `--help`.

    Raises:
        SystemExit: With status 1 after a usage error, 0 after `--help`.
    """
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    owner = args._parser
    del args._parser
    if extras:
        owner.error(f"unrecognized arguments: {' '.join(extras)}")
    if args.command is None:
        owner.error("the following arguments are required: COMMAND")
    return args


def _silence_stdout() -> None:
    """Points stdout at the null device once its reader has gone.

    Python flushes stdout again at exit; without this, that flush fails too
    and prints "Exception ignored ... BrokenPipeError".
    """
    with contextlib.suppress(AttributeError, OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv=None) -> int:
    """Runs `keras-xception`; returns the exit status (see the module doc)."""
    tfenv.configure()
    from keras_xception.checks import lift_pillow_limit
    from keras_xception.errors import XceptionError

    with _runtime.interrupts() as interrupted, _runtime.one_line_warnings():
        try:
            with _runtime.checked_stdout():
                args = parse_args(argv)
                # The arguments as given, for commands that pass them on unchanged
                # (fine-tune's local workers).
                args.argv = list(sys.argv[1:] if argv is None else argv)
                tfenv.install()
                # The pixel limit is --max-pixels's, not Pillow's (checks).
                lift_pillow_limit()
                try:
                    status = int(args.run(args) or 0)
                finally:
                    tfenv.uninstall()
                if interrupted.is_set():  # The interrupt itself was swallowed.
                    raise KeyboardInterrupt
                sys.stdout.flush()
            return status
        except BaseException as err:
            if isinstance(err, KeyboardInterrupt) or (
                interrupted.is_set() and not isinstance(err, SystemExit)
            ):
                # An exception raised while Ctrl-C was pressed comes of it
                # (a library that wrapped the KeyboardInterrupt, say).
                print("interrupted", file=sys.stderr)
                return 130
            if isinstance(err, XceptionError):
                if isinstance(err, _runtime.StdoutError):
                    _silence_stdout()
                print(f"error: {err}", file=sys.stderr)
                return 1
            if isinstance(err, BrokenPipeError):
                _silence_stdout()
                return 0
            if isinstance(err, OSError) and (err.errno in _ENVIRONMENT_ERRORS
                                             or _refused_by_the_file_system(err)):
                print(f"error: {_os_error_line(err)}", file=sys.stderr)
                return 1
            raise


# Failures of the machine rather than of this program (a full disk, a
# folder without write permission, a read-only file system), with what the
# user can do about each: one line, exit 1, like any expected error.
_ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "free some space, or choose another location",
    errno.EDQUOT: "free some space, or choose another location",
    errno.EACCES: "check its permissions, or choose another location",
    errno.EPERM: "check its permissions, or choose another location",
    errno.EROFS: "choose a location on a writable file system",
    errno.EIO: "check the device",
}


def _refused_by_the_file_system(err):
    """Whether `err` is a path that a file system without storage (/proc,
    /sys) would not create: root passes the checks made before the work
    there. Any other missing path is a bug and keeps its traceback."""
    if err.errno not in (errno.ENOENT, errno.ENOTDIR) or not err.filename:
        return False
    parent = os.path.dirname(os.path.abspath(os.fsdecode(err.filename)))
    try:
        return os.statvfs(parent).f_blocks == 0
    except OSError:
        return False


def _os_error_line(err):
    """`err` (one of `_ENVIRONMENT_ERRORS`, or refused by the file system)
    as one line naming the path and a remedy."""
    reason = " ".join(str(err.strerror or os.strerror(err.errno)).split())
    where = f" ({os.fsdecode(err.filename)!r})" if err.filename else ""
    remedy = _ENVIRONMENT_ERRORS.get(
        err.errno, "this file system does not let it be created there; choose another location")
    return f"{reason}{where}: {remedy}"


if __name__ == "__main__":
    sys.exit(main())
