"""One way to write a file or folder so that a crash never leaves half of it.

Everything the package writes to a path a user will read (the weights cache,
saved models, checkpoints, exports, batch results) goes through here:

- the content is written under a temporary name in the destination's own
  folder (so the final `rename` never crosses a file system);
- it is flushed to disk (`fsync`), given the mode a new file would get under
  the process's umask (temporary files from `tempfile` are 0600, which a
  shared cache or a container running as another user cannot read), and
  renamed into place with `os.replace`, which is atomic on POSIX and Windows;
- the folder's entry is flushed too, so the rename survives a power cut;
- on any exception, `KeyboardInterrupt` included, the temporary file or folder
  is removed and the destination is left as it was.

A process killed with SIGKILL cannot clean up: its temporary name (which
starts with `.` and ends with `.tmp`) may stay behind, but never the final
path. A temporary's name carries the host and process that wrote it, so
`remove_dead_temporaries`, called by the next run of the same command,
removes those whose process has ended; `stale_temporaries` lists them all.

Cancelling: once `cancel_event` is set (the command line sets it when Ctrl-C
is pressed), `publish` raises `KeyboardInterrupt` instead of renaming, so
nothing more is published even where the interrupt itself was swallowed (a
`KeyboardInterrupt` raised inside a garbage-collector callback, for one, is
discarded by Python).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pathlib
import re
import shutil
import socket
import tempfile
import threading

from keras_xception.errors import ConfigError

TEMP_SUFFIX = ".tmp"

_umask_lock = threading.Lock()

# Set to stop every later `publish`; see the module doc.
cancel_event = threading.Event()


def check_cancelled() -> None:
    """Raises `KeyboardInterrupt` if `cancel_event` is set."""
    if cancel_event.is_set():
        raise KeyboardInterrupt


def umask() -> int:
    """The process's current umask (read without changing it for long)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The permission bits a new regular file gets: `0o666 & ~umask`."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """The permission bits a new folder gets: `0o777 & ~umask`."""
    return 0o777 & ~umask()


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flushes a folder's entries to disk (a no-op where that is unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_parent(path: str | os.PathLike, *, what: str = "output") -> pathlib.Path:
    """Checks that `path` could be written, before any work is done for it.

    Args:
        path: The destination file or folder.
        what: How to name it in the error, e.g. `"--output"`.

    Returns:
        `path` as an absolute `pathlib.Path` (the user's `~` expanded).

    Raises:
        ConfigError: If `path` is empty, a component of the parent is a
            file, or the parent exists and cannot be written to (its
            permissions, or a file system such as /proc that creates
            nothing).
    """
    if not os.fspath(path).strip():
        raise ConfigError(f"{what} is empty: give a path. Received: {what} {os.fspath(path)!r}")
    path = pathlib.Path(path).expanduser().absolute()
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"Cannot write {what} {str(path)!r}: {str(parent)!r} is a "
                    "file, not a folder. Choose another path."
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(
                    f"Cannot write {what} {str(path)!r}: the folder "
                    f"{str(parent)!r} is not writable. Choose another path."
                )
            refusal = _refuses_new_entries(parent)
            if refusal:
                raise ConfigError(
                    f"Cannot write {what} {str(path)!r}: the file system of "
                    f"{str(parent)!r} {refusal}. Choose another path."
                )
            break
        if parent.is_symlink():  # A dangling link where a folder should be.
            raise ConfigError(
                f"Cannot write {what} {str(path)!r}: {str(parent)!r} is a "
                "link to nothing. Choose another path."
            )
    return path


def _refuses_new_entries(folder: pathlib.Path) -> str | None:
    """Why no file can be created in `folder` (words that follow "the file
    system of FOLDER"), or None if one can.

    A file system without storage (/proc, /sys) lets root pass the
    permission check and then refuses the file at the end of the work. Such
    a file system reports no blocks; only then is an empty file created and
    removed to see (a file, never a folder, which on cgroup or configfs
    would create a kernel object), so an ordinary folder is left untouched,
    and a network or FUSE file system reporting no blocks passes if it
    takes the file. The probe has a temporary's name, which a later run
    removes if this process dies before it does.
    """
    try:
        if os.statvfs(folder).f_blocks != 0:
            return None
    except OSError:
        return None  # Cannot tell: the work itself will say.
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".probe.{_owner()}.",
                                     suffix=TEMP_SUFFIX)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS):
            return "cannot hold files"
        reason = " ".join(str(err.strerror or os.strerror(err.errno)).split())
        return f"refused a file there ({reason})"
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def check_output_folder(path: str | os.PathLike, *, what: str = "output") -> pathlib.Path:
    """`check_parent` for a folder a command creates or fills, which a link
    to nothing cannot be (a file is replaced, link and all, by `publish`).

    Raises:
        ConfigError: As `check_parent`, and if `path` is a link to nothing.
    """
    full = check_parent(path, what=what)
    if full.is_symlink() and not full.exists():
        raise ConfigError(
            f"Cannot write {what} {str(full)!r}: it is a link to nothing "
            f"({os.readlink(full)!r}). Remove the link or choose another path."
        )
    return full


def _owner() -> str:
    """This process as a temporary's name records it: `<machine>-<pid>`.

    `<machine>` is 12 hex digits of a hash of the host name and the PID
    namespace, so a PID is only ever judged alive or dead where it means
    the same process: not on another host sharing the file system, nor in
    another container with the same host name.
    """
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = ""
    tag = f"{socket.gethostname()}/{namespace}".encode("utf-8", "surrogateescape")
    return f"{hashlib.sha256(tag).hexdigest()[:12]}-{os.getpid()}"


def _temporary_prefix(path: pathlib.Path) -> str:
    return f".{path.name}.{_owner()}."


def _temporary_name(path: pathlib.Path, suffix: str, *, directory=False) -> pathlib.Path:
    """A new empty file (or folder) beside `path`, under a temporary name.

    An error creating it names `path`, the file the user asked for.
    """
    try:
        if directory:
            return pathlib.Path(tempfile.mkdtemp(
                dir=path.parent, prefix=_temporary_prefix(path), suffix=TEMP_SUFFIX + suffix))
        fd, name = tempfile.mkstemp(
            dir=path.parent, prefix=_temporary_prefix(path), suffix=TEMP_SUFFIX + suffix
        )
    except OSError as err:
        raise OSError(err.errno, err.strerror, os.fspath(path)) from None
    os.close(fd)
    return pathlib.Path(name)


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_file(path: pathlib.Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def publish(tmp: str | os.PathLike, path: str | os.PathLike, *, overwrite=True) -> None:
    """Moves a complete temporary file or folder to its final path.

    Flushes `tmp`, gives it the mode a new file (or folder) gets under the
    umask, renames it to `path` and flushes the folder.

    Args:
        tmp: The temporary file or folder, in `path`'s folder.
        path: The final path.
        overwrite: Whether an existing file at `path` may be replaced. A
            folder is only ever put where nothing, or an empty folder, is.

    Raises:
        FileExistsError: If `path` exists and may not be replaced.
        KeyboardInterrupt: If `cancel_event` is set; `path` is left as it was.
    """
    check_cancelled()
    tmp, path = pathlib.Path(tmp), pathlib.Path(path)
    if tmp.is_dir():
        for root, dirs, files in os.walk(tmp):
            os.chmod(root, dir_mode())
            for name in files:
                full = pathlib.Path(root, name)
                os.chmod(full, file_mode())
                _fsync_file(full)
        if path.is_dir() and not path.is_symlink():
            path.rmdir()  # Only an empty folder: OSError(ENOTEMPTY) otherwise.
        elif path.exists() or path.is_symlink():
            raise FileExistsError(errno.EEXIST, "Output exists", str(path))
    else:
        os.chmod(tmp, file_mode())
        _fsync_file(tmp)
        if not overwrite and (path.exists() or path.is_symlink()):
            raise FileExistsError(errno.EEXIST, "Output exists", str(path))
    check_cancelled()
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "", directory=False, overwrite=True):
    """A temporary path to write `path`'s content to; moved into place on success.

    Use it where a library writes the file itself (`model.save`, h5py,
    `Model.export`):

        with atomic_path("model.keras", suffix=".keras") as tmp:
            model.save(tmp)

    Args:
        path: The final file or folder.
        suffix: Appended to the temporary name, for writers that insist on
            an extension (Keras wants `.keras` and `.weights.h5`).
        directory: Whether the content is a folder. The temporary folder is
            created (empty); for a file, an empty file is.
        overwrite: Whether an existing file at `path` may be replaced.

    Yields:
        The temporary `pathlib.Path`, beside `path`.
    """
    path = pathlib.Path(path)
    tmp = _temporary_name(path, "" if directory else suffix, directory=directory)
    try:
        yield tmp
        publish(tmp, path, overwrite=overwrite)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, overwrite=True, **open_kwargs):
    """Opens a temporary file for writing; it replaces `path` when closed cleanly.

        with atomic_write("history.json", "w") as f:
            json.dump(history, f)

    Args:
        path: The final file.
        mode: `open` mode: `"wb"` (default) or `"w"`.
        overwrite: Whether an existing file at `path` may be replaced.
        **open_kwargs: Passed to `open` (`encoding=`, for one).

    Yields:
        The open file object.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_write writes files; mode must contain 'w'. Received: mode={mode!r}")
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replaces `path` with `data`."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Atomically replaces `path` with `text`."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)


def stale_temporaries(folder: str | os.PathLike, name: str) -> list[pathlib.Path]:
    """Temporary files or folders left beside `folder/name` by a killed process."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return []
    prefix = f".{name}."
    return sorted(
        p for p in folder.iterdir()
        if p.name.startswith(prefix) and TEMP_SUFFIX in p.name[len(prefix):]
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # Another user's (EPERM), or not a PID: kept.
        return True
    return True


def remove_dead_temporaries(path: str | os.PathLike, *, any_name: bool = False) -> list[pathlib.Path]:
    """Removes the temporaries beside `path` whose writer has ended.

    Only temporaries written on this host by a process that no longer runs
    are removed; a live writer's, another host's (a shared file system) and
    those of older versions (whose names record no process) are kept.

    Args:
        path: The final file or folder a command writes.
        any_name: Remove such temporaries of every file in `path`'s folder,
            not only `path`'s (for a folder of checkpoints or shards).

    Returns:
        The temporaries removed.
    """
    path = pathlib.Path(path)
    folder = path.parent
    if not folder.is_dir():
        return []
    machine = _owner().rsplit("-", 1)[0]
    # ".<name>.<machine>-<pid>.<mkstemp's 8 characters>.tmp<writer's suffix>"
    marker = re.compile(r"\.(?P<machine>[0-9a-f]{12})-(?P<pid>\d{1,10})\.[a-z0-9_]{8}"
                        + re.escape(TEMP_SUFFIX) + r"(\.[A-Za-z0-9.]+)?$")
    prefix = f".{path.name}."
    removed = []
    for tmp in folder.iterdir():
        name = tmp.name
        if not name.startswith("." if any_name else prefix):
            continue
        match = marker.search(name, 1 if any_name else len(prefix) - 1)
        if match is None or match.group("machine") != machine:
            continue
        if not any_name and match.start() != len(prefix) - 1:
            continue  # Another file's temporary whose name begins like this one's.
        pid = int(match.group("pid"))
        if pid == os.getpid() or _alive(pid):
            continue
        with contextlib.suppress(OSError):
            _remove(tmp)
            removed.append(tmp)
    return sorted(removed)
