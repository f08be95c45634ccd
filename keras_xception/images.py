"""Finding image files and decoding them, one image or a stream of batches.

Everything in the package that reads images goes through this module:
`keras-xception classify`, `preprocessing.load_image` and the training
datasets. So a model sees the same pixels whether it is trained, evaluated
or used from the command line.

- `find_images` expands folders into image files (one walker, one rule for
  hidden files and links);
- `decode` reads one file into a float32 RGB array in [0, 255], and
  `decode_bytes` the same from a file's bytes in memory (the server's
  uploads);
- `iter_batches` streams files through `decode` on a few threads and yields
  batches, holding only a bounded number of images in memory however many
  files there are.

How an image is decoded:

- JPEGs (and MPOs, a phone camera's JPEG with more pictures after the
  first) are decoded by libjpeg at a reduced scale (1/2, 1/4 or 1/8; Pillow's
  `Image.draft`) when the result is still at least twice the target size, as
  Pillow's own `Image.thumbnail` does, so a 12000x12000 photo is never
  expanded to 432 MB of pixels to be shrunk to 299x299;
- the EXIF orientation is applied, so the array is the photo as a phone or
  an image viewer shows it (a portrait photo comes out upright);
- grayscale, palette, CMYK and 16-bit images become 8-bit RGB (16-bit values
  are scaled by 255/65535, not clipped), and transparent areas become white;
- the image is resized with antialiased bilinear interpolation
  (`RESIZE_METHOD`);
- images larger than a pixel limit are refused before their pixels are
  decoded (see `MAX_PIXELS`), and a file that is truncated or corrupt is an
  error, never an image padded with grey.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import os
import pathlib
import stat
import struct

import numpy as np

from keras_xception.checks import one_line, positive_int
from keras_xception.errors import ConfigError, ImageError

# File name endings read as images when a folder is searched (case-insensitive).
# A file named explicitly is read whatever its name.
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
)

# Files that operating systems drop into folders; never searched. Names that
# start with "." (hidden files and folders, `.DS_Store`, macOS `._photo.jpg`)
# are skipped too.
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})

# The largest image, in pixels (width x height), that is decoded by default:
# the size at which Pillow itself refuses a file as a decompression bomb
# (twice `PIL.Image.MAX_IMAGE_PIXELS`'s default of 89,478,485), about
# 13,377 x 13,377. Set the environment variable KERAS_XCEPTION_MAX_PIXELS, or
# pass `max_pixels`, to change it.
MAX_PIXELS = 2 * (1024 * 1024 * 1024 // 4 // 3)

MAX_PIXELS_ENV = "KERAS_XCEPTION_MAX_PIXELS"

# How images are resized. PIL's bilinear filter widens its support when
# shrinking, so a downscale is antialiased (unlike Keras's `load_img`, whose
# default "nearest" aliases fine texture). Bilinear is also the resize that
# Keras's own image-classification examples and keras-hub's Xception image
# converter use, so predictions stay comparable with theirs.
RESIZE_METHOD = "bilinear"

# A JPEG is decoded at a reduced scale only while the result stays at least
# this many times the target size (Pillow's `thumbnail` default), so the
# final bilinear resize still averages several decoded pixels per output
# pixel.
DRAFT_GAP = 2

# EXIF orientations (5 to 8) that turn the stored image by 90 degrees.
# Pillow's names for files libjpeg decodes: a JPEG, and an MPO (the JPEG of a
# phone camera that stores more pictures after the first, which Pillow reads).
JPEG_FORMATS = ("JPEG", "MPO")

_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112


def _shown(path) -> str:
    """A path as quoted, one-line text for a message (`repr` of its str)."""
    return repr(os.fsdecode(path))


def max_pixels_limit(max_pixels=None) -> int:
    """The pixel limit in force: `max_pixels`, else the environment, else `MAX_PIXELS`.

    Args:
        max_pixels: A positive integer, or `None` for the default.

    Returns:
        The limit, in pixels.

    Raises:
        ConfigError: If `max_pixels` or KERAS_XCEPTION_MAX_PIXELS is not a
            positive integer.
    """
    if max_pixels is None:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return MAX_PIXELS
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(
                f"{MAX_PIXELS_ENV} must be a positive whole number of pixels. "
                f"Received: {MAX_PIXELS_ENV}={text!r}"
            )
        return value
    if (
        isinstance(max_pixels, bool)
        or not isinstance(max_pixels, (int, np.integer))
        or max_pixels < 1
    ):
        raise ConfigError(
            "`max_pixels` must be a positive integer or None. "
            f"Received: max_pixels={max_pixels!r}"
        )
    return int(max_pixels)


def _check_target_size(target_size):
    if target_size is None:
        return None
    try:
        height, width = (int(v) for v in target_size)
    except (TypeError, ValueError):
        raise ConfigError(
            "`target_size` must be (height, width) or None. "
            f"Received: target_size={target_size!r}"
        ) from None
    if height < 1 or width < 1:
        raise ConfigError(
            f"`target_size` must be positive. Received: target_size={target_size!r}"
        )
    return height, width


# --- finding files ------------------------------------------------------------


def _skipped(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _link_problem(path: pathlib.Path) -> str:
    """What is wrong with a path that `os.stat` cannot follow."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"{_shown(path)} is a link that loops back on itself"
        if path.is_symlink():
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"{_shown(path)} is a link to {_shown(target)}, which does not exist"
        if isinstance(err, FileNotFoundError):
            return f"No such file or folder: {_shown(path)}"
        if isinstance(err, NotADirectoryError):
            return f"{_shown(path)}: a part of this path is a file, not a folder"
        return f"Cannot read {_shown(path)}: {err.strerror or err}"
    return f"Cannot read {_shown(path)}"


def find_images(paths, *, on_error=None, extensions=IMAGE_EXTENSIONS) -> list[pathlib.Path]:
    """Expands files and folders into the image files to read.

    Folders are searched recursively for files whose names end with one of
    `extensions` (case-insensitive); a file named in `paths` is returned
    whatever its name. Inside folders, names that start with "." (hidden
    files and folders, `.DS_Store`, macOS `._photo.jpg`) are skipped, and so
    are `Thumbs.db` and `desktop.ini`. Links are followed, to files and to
    folders; each real folder is searched once per entry of `paths`, so a
    link that loops back to a folder being searched is reported, not
    followed.

    Args:
        paths: Files and folders (`str`, `bytes` or path-like), e.g. as
            given on a command line.
        on_error: Called as `on_error(path, message)` for each path that is
            missing, a dangling or looping link, a folder that cannot be
            read or a file that is not a regular file (a FIFO, a device);
            `message` is one line that names the path and says what is
            wrong. The path is then skipped. If `None`, the first such
            problem raises `ImageError`.
        extensions: The name endings searched for in folders, or `None` for
            every file that is not skipped as hidden.

    Returns:
        The files, as `pathlib.Path`s built from the given paths (links not
        resolved): entries of `paths` in their order, each folder's content
        sorted by name, subfolders searched where they sort.

    Raises:
        ImageError: If `on_error` is `None` and a path has a problem above.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    if extensions is not None:
        extensions = tuple(e.lower() for e in extensions)

    def report(path, message):
        if on_error is None:
            raise ImageError(message)
        on_error(path, message)

    found: list[pathlib.Path] = []
    for given in paths:
        path = pathlib.Path(os.fsdecode(given))
        try:
            info = os.stat(path)
        except OSError:
            report(path, _link_problem(path))
            continue
        if stat.S_ISDIR(info.st_mode):
            _walk(path, info, extensions, found, report)
        elif stat.S_ISREG(info.st_mode):
            text = os.fsdecode(given)
            if text.endswith(("/", os.sep)):
                report(path, f"{_shown(text)} is a file, not a folder")
            else:
                found.append(path)
        else:
            report(path, f"{_shown(path)} is not a regular file or a folder")
    return found


def _walk(root, root_info, extensions, found, report):
    """Depth-first search of `root`; appends matching files to `found`."""
    visited = set()

    def visit(folder, info, ancestors):
        key = (info.st_dev, info.st_ino)
        visited.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            report(folder, f"Cannot search folder {_shown(folder)}: "
                           f"{err.strerror or err}")
            return
        for entry in entries:
            if _skipped(entry.name):
                continue
            path = folder / entry.name
            try:
                child = os.stat(path)  # follows links
            except OSError:
                report(path, _link_problem(path))
                continue
            if stat.S_ISDIR(child.st_mode):
                child_key = (child.st_dev, child.st_ino)
                if child_key in ancestors:
                    report(path, f"{_shown(path)} is a link that loops back to "
                                 f"{_shown(ancestors[child_key])}; not followed")
                elif child_key not in visited:
                    visit(path, child, {**ancestors, child_key: path})
            elif extensions is None or entry.name.lower().endswith(extensions):
                if stat.S_ISREG(child.st_mode):
                    found.append(path)
                else:
                    report(path, f"{_shown(path)} is not a regular file")

    visit(root, root_info, {(root_info.st_dev, root_info.st_ino): root})


# --- decoding -----------------------------------------------------------------


def _to_rgb(image, top=None):
    """Converts any PIL mode to RGB, compositing transparency onto white.

    `top` is the largest value of the 32-bit ("I" or "F") image that `image`
    is a strip of; `None` takes it from `image` itself.
    """
    from PIL import Image

    if image.mode.startswith("I;16"):
        # 16-bit grayscale: scale 0..65535 to 0..255 (65535 = 255 * 257)
        # instead of letting PIL clip everything above 255 to white. A dark
        # image stays dark: the scale follows the bit depth, not the content.
        array = np.asarray(image)
        image = Image.fromarray((array // 257).astype(np.uint8), "L")
    elif image.mode in ("I", "F"):
        # 32-bit integer or float grayscale: the values tell the range.
        array = np.asarray(image, dtype=np.float64)
        if top is None:
            top = array.max() if array.size else 0.0
        scale = 255.0 / (65535.0 if top > 255 else 255.0)
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        # Palette images may carry transparency in the palette.
        image = image.convert("RGBA")
    if image.mode in ("LA", "La", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        if image.mode == "RGBa":
            image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


# Rows of a full-size image converted at a time (about 8 MB of Pillow's
# 4-byte pixels), so no second full-size copy is ever made.
_STRIP_BYTES = 8 << 20

# For each EXIF orientation, how the stored image lies in the upright array:
# a NumPy view of the upright array with the stored image's shape (the
# inverses of the transposes `ImageOps.exif_transpose` applies).
_STORED_VIEWS = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda a: np.rot90(a, 1),  # ROTATE_270
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # TRANSVERSE
    8: lambda a: np.rot90(a, -1),  # ROTATE_90
}


def _full_size(image, dtype) -> np.ndarray:
    """The loaded `image`, upright and RGB, as a new `dtype` array.

    The pixels of `ImageOps.exif_transpose` then `_to_rgb` on the whole
    image, but converted a strip of stored rows at a time, each written
    straight into its place in the upright array: memory holds Pillow's
    decoded image, the result and one strip, never a transposed, converted
    or float copy of the whole image.
    """
    width, height = image.size
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    view = _STORED_VIEWS.get(orientation)
    shape = (width, height, 3) if view is not None \
        and orientation in _TRANSPOSED_ORIENTATIONS else (height, width, 3)
    upright = np.empty(shape, dtype)
    stored = upright if view is None else view(upright)
    top = None
    if image.mode in ("I", "F"):
        top = image.getextrema()[1]
    step = max(1, _STRIP_BYTES // (4 * max(width, 1)))
    for row in range(0, height, step):
        strip = image.crop((0, row, width, min(row + step, height)))
        stored[row:row + step] = np.asarray(_to_rgb(strip, top))
    return upright


def _check_dtype(dtype):
    try:
        wanted = np.dtype(dtype)
    except TypeError:
        wanted = None
    if wanted not in (np.dtype(np.float32), np.dtype(np.uint8)):
        raise ConfigError(
            f"`dtype` must be 'float32' or 'uint8'. Received: dtype={dtype!r}"
        )
    return wanted


def _draft_size(image, height, width):
    """The size to ask `Image.draft` for: the target, in stored orientation, times DRAFT_GAP."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # A broken EXIF block: exif_transpose reports it later.
        orientation = None
    if orientation in _TRANSPOSED_ORIENTATIONS:
        height, width = width, height
    return (width * DRAFT_GAP, height * DRAFT_GAP)



def find_given(path, *, on_error):
    """The images one path given by a user stands for.

    `find_images` for a single path, plus one rule the commands share: a
    folder in which the search finds no image is reported through
    `on_error` too, since a user who names a folder expects images in it.

    Args:
        path: A file or folder, as given on the command line or in a list.
        on_error: Called as `on_error(path, message)` for each problem.

    Returns:
        The image files found, as `find_images` returns them.
    """
    found = find_images([path], on_error=on_error)
    if not found and os.path.isdir(path):
        on_error(path, f"no images found in {os.fsdecode(path)!r} (searched "
                       f"recursively for {', '.join(IMAGE_EXTENSIONS)})")
    return found


def decode(path, target_size=(299, 299), *, max_pixels=None, dtype="float32") -> np.ndarray:
    """Reads an image file as an RGB array with values in [0, 255], float32 by default.

    See the module docstring for what happens to orientation, color modes,
    transparency and large JPEGs. Safe to call from several threads at once
    and from a `tf.data` `py_function`/`numpy_function`.

    Args:
        path: The image file (`str`, `bytes` or path-like). Its name does not
            matter; its content does.
        target_size: `(height, width)` to resize to with antialiased
            bilinear interpolation, or `None` to keep the image's size (as
            displayed, after the EXIF orientation).
        max_pixels: The largest image accepted, in pixels (width x height of
            the stored image); `None` uses KERAS_XCEPTION_MAX_PIXELS if set,
            else `MAX_PIXELS`. Pillow's own process-wide limit
            (`PIL.Image.MAX_IMAGE_PIXELS`, which warns above 89,478,485
            pixels and refuses above twice that) applies as well; set it to
            `None` to let `max_pixels` alone decide.
        dtype: `"float32"` (the default: what models take) or `"uint8"`
            (the same values in a quarter of the memory, for a photo kept
            at full size, e.g. to draw `explain.overlay` on).

    Returns:
        A new, writable NumPy array of shape `(height, width, 3)` and type
        `dtype`. With `target_size=None` it is filled a strip of rows at a
        time: the memory needed is Pillow's decoded image plus the result.

    Raises:
        ImageError: (a `ValueError`) if the file is missing, a folder, not a
            regular file, empty, not an image, truncated or corrupt, or
            larger than the pixel limit. The message is one line that names
            the path.
        ConfigError: If `target_size` is not `None` or two positive
            integers, the pixel limit is not a positive integer, or `dtype`
            is neither float32 nor uint8.
    """
    size = _check_target_size(target_size)
    dtype = _check_dtype(dtype)
    limit = max_pixels_limit(max_pixels)
    path = os.fsdecode(os.fspath(path))
    shown = _shown(path)
    try:
        info = os.stat(path)
    except OSError as err:
        if isinstance(err, FileNotFoundError) and not os.path.islink(path):
            raise ImageError(f"Image file not found: {shown}") from None
        raise ImageError(_link_problem(pathlib.Path(path))) from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"Cannot read {shown}: it is a folder, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"Cannot read {shown}: it is not a regular file")
    if info.st_size == 0:
        raise ImageError(f"Cannot read {shown}: the file is empty (0 bytes)")
    return _decode_opened(path, shown, size, dtype, limit)


def decode_bytes(data, target_size=(299, 299), *, max_pixels=None, dtype="float32",
                 name="the image") -> np.ndarray:
    """`decode` for an image file held in memory (an upload, a base64 field).

    The same pipeline as `decode` (orientation, colour modes, transparency,
    JPEG draft, resize, the pixel limit checked before the pixels are
    decoded); only the source differs.

    Args:
        data: The file's bytes (`bytes`, `bytearray` or `memoryview`).
        target_size, max_pixels, dtype: As for `decode`.
        name: How messages name the image (`"image 2"`, `"the upload"`); it
            stands where `decode` names the path.

    Returns:
        A new, writable `(height, width, 3)` array, as `decode` returns.

    Raises:
        ImageError: If `data` is empty, not an image, truncated or corrupt,
            or larger than the pixel limit; one line naming `name`.
        ConfigError: As for `decode`.
    """
    import io

    size = _check_target_size(target_size)
    dtype = _check_dtype(dtype)
    limit = max_pixels_limit(max_pixels)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ConfigError(
            "`data` must be the bytes of an image file. "
            f"Received: data of type {type(data).__name__}"
        )
    if len(data) == 0:
        raise ImageError(f"Cannot read {name}: it is empty (0 bytes)")
    return _decode_opened(io.BytesIO(data), name, size, dtype, limit)


def _decode_opened(source, shown, size, dtype, limit) -> np.ndarray:
    """Decodes `source` (a path or a binary file object) for `decode`/`decode_bytes`.

    `shown` names it in messages; `size`, `dtype` and `limit` are checked.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            width, height = image.size
            if width * height > limit:
                raise ImageError(
                    f"Refusing to decode {shown}: it is {width}x{height} = "
                    f"{width * height:,} pixels, over the limit of {limit:,}. "
                    f"If you trust the file, raise the limit with "
                    f"{MAX_PIXELS_ENV} (command line: --max-pixels)"
                )
            if size is not None and image.format in JPEG_FORMATS:
                image.draft(None, _draft_size(image, *size))
            image.load()
            if size is None:
                return _full_size(image, dtype)
            ImageOps.exif_transpose(image, in_place=True)
            image = _to_rgb(image)
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=dtype)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(
            f"Cannot read {shown}: it is not an image file in a format Pillow "
            "can decode"
        ) from None
    except Image.DecompressionBombError as err:
        raise ImageError(
            f"Refusing to decode {shown}: {err} Pillow's limit is "
            "PIL.Image.MAX_IMAGE_PIXELS; raise or clear it if you trust the file"
        ) from None
    except PermissionError:
        raise ImageError(f"Cannot read {shown}: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as err:
        reason = one_line(err)
        raise ImageError(
            f"Cannot read {shown}: the image data is truncated or corrupt ({reason})"
        ) from None


def iter_batches(
    paths,
    *,
    target_size=(299, 299),
    batch_size=8,
    preprocess=None,
    workers=None,
    on_error=None,
    max_pixels=None,
):
    """Decodes image files on a few threads and yields them in batches.

    Decoding runs at most `2 * batch_size` images (and at least `workers`)
    ahead of the batch being yielded, so memory holds a few batches however
    many paths there are; `paths` may be a lazy iterable. Batches are full
    (`batch_size` images) except the last: a file that cannot be decoded is
    left out and the next one takes its place.

    Closing the generator (or leaving a `for` loop over it early) cancels
    the decoding not yet started and returns at once; decodes already
    running finish on their threads and are dropped.

    Args:
        paths: Image files, in the order wanted.
        target_size: `(height, width)` every image is resized to.
        batch_size: Images per batch, at least 1.
        preprocess: A function applied to each batch (float32, values in
            [0, 255]) before it is yielded, e.g.
            `keras_xception.preprocess_input`; `None` for none.
        workers: Decoding threads; `None` for `min(4, os.cpu_count())`.
        on_error: Called as `on_error(path, message)` for each file that
            cannot be decoded (`message`: one line naming it). If `None`, the
            `ImageError` is raised instead.
        max_pixels: The pixel limit passed to `decode`.

    Yields:
        `(paths, images)`: the list of the batch's paths and a float32 array
        of shape `(len(paths), height, width, 3)`, in input order.

    Raises:
        ConfigError: If `target_size`, `batch_size`, `workers` or
            `max_pixels` is not valid (checked on the first `next`).
        ImageError: If a file cannot be decoded and `on_error` is `None`.
    """
    size = _check_target_size(target_size)
    if size is None:
        raise ConfigError(
            "iter_batches stacks images into batches, so it needs a "
            f"(height, width) target_size. Received: target_size={target_size!r}"
        )
    batch_size = positive_int(batch_size, "batch_size")
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    workers = positive_int(workers, "workers")
    limit = max_pixels_limit(max_pixels)
    ahead = max(2 * batch_size, workers)

    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix="keras_xception-decode"
    )
    pending = collections.deque()
    source = iter(paths)

    def submit_next():
        for path in source:
            pending.append((path, pool.submit(decode, path, size, max_pixels=limit)))
            return True
        return False

    def new_batch():
        return np.empty((batch_size, size[0], size[1], 3), dtype=np.float32)

    try:
        for _ in range(ahead):
            if not submit_next():
                break
        batch_paths, batch = [], new_batch()
        while pending:
            path, future = pending.popleft()
            submit_next()
            try:
                image = future.result()
            except ImageError as err:
                if on_error is None:
                    raise
                on_error(path, str(err))
                continue
            batch[len(batch_paths)] = image
            batch_paths.append(path)
            del image, future
            if len(batch_paths) == batch_size:
                out = batch if preprocess is None else preprocess(batch)
                batch = None
                yield batch_paths, out
                del out
                batch_paths, batch = [], new_batch()
        if batch_paths:
            out = batch[: len(batch_paths)]
            yield batch_paths, out if preprocess is None else preprocess(out)
    finally:
        pending.clear()
        pool.shutdown(wait=False, cancel_futures=True)
