"""keras_xception.images: the folder walker, the decoder and the batch stream."""

import os
import pathlib
import threading
import weakref

import numpy as np
import pytest
from PIL import Image, ImageOps

from keras_xception import images
from keras_xception.errors import ConfigError, ImageError


def _save(path, image=None, **kwargs):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (image or Image.new("RGB", (8, 6), (10, 20, 30))).save(path, **kwargs)
    return path


def _collect():
    errors = []
    return errors, lambda path, message: errors.append((pathlib.Path(path), message))


# --- find_images ----------------------------------------------------------------


def test_folders_are_searched_recursively_sorted_and_hidden_names_skipped(tmp_path):
    root = tmp_path / "photos"
    for name in ["b.jpg", "a.PNG", "sub/c.JpEg", "sub/deeper/d.webp", "z.tif"]:
        _save(root / name, format="PNG")
    for name in [".DS_Store", "._a.jpg", ".hidden/e.jpg", "sub/.f.png",
                 "Thumbs.db", "desktop.ini", "notes.txt", "README"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not an image")
    found = images.find_images([root])
    assert found == [root / "a.PNG", root / "b.jpg", root / "sub" / "c.JpEg",
                     root / "sub" / "deeper" / "d.webp", root / "z.tif"]
    # Every non-hidden file when extensions=None (for a dataset's full listing).
    listed = images.find_images([root], extensions=None)
    assert root / "notes.txt" in listed and root / "README" in listed
    assert not any(p.name.startswith(".") or p.name in ("Thumbs.db", "desktop.ini")
                   for p in listed)


def test_named_files_are_read_whatever_their_name_in_the_given_order(tmp_path):
    root = tmp_path / "photos"
    hidden = _save(root / ".hidden.jpg")
    odd = _save(root / "scan.data", format="PNG")
    plain = _save(root / "a.jpg")
    assert images.find_images([odd, str(hidden), root, os.fsencode(plain)]) == [
        odd, hidden, plain, plain
    ]


def test_links_are_followed_and_each_folder_searched_once(tmp_path):
    real = tmp_path / "real"
    _save(real / "a.jpg")
    _save(real / "inner" / "b.jpg")
    root = tmp_path / "root"
    root.mkdir()
    (root / "file_link.jpg").symlink_to(real / "a.jpg")
    (root / "folder_link").symlink_to(real)
    (root / "same_folder_again").symlink_to(real)
    errors, on_error = _collect()
    found = images.find_images([root], on_error=on_error)
    assert errors == []
    # "same_folder_again" is the folder already searched: its files once.
    assert found == [root / "file_link.jpg", root / "folder_link" / "a.jpg",
                     root / "folder_link" / "inner" / "b.jpg"]


def test_loops_dangling_links_and_missing_paths_are_reported_and_skipped(tmp_path):
    root = tmp_path / "root"
    _save(root / "sub" / "a.jpg")
    (root / "sub" / "up").symlink_to(root)  # A loop back to the top.
    (root / "gone.jpg").symlink_to(tmp_path / "nothing.jpg")
    (root / "self").symlink_to("self")  # A link to itself.
    missing = tmp_path / "missing.jpg"
    errors, on_error = _collect()
    found = images.find_images([root, missing], on_error=on_error)
    assert found == [root / "sub" / "a.jpg"]  # The loop is not searched again.
    messages = dict(errors)
    assert set(messages) == {root / "gone.jpg", root / "self", root / "sub" / "up",
                             missing}
    assert "does not exist" in messages[root / "gone.jpg"]
    assert "loops" in messages[root / "self"]
    assert "loops back to" in messages[root / "sub" / "up"]
    assert "No such file or folder" in messages[missing]
    for path, message in errors:
        assert str(path) in message and "\n" not in message
    # Without on_error, the first problem is an ImageError.
    with pytest.raises(ImageError, match="missing.jpg"):
        images.find_images([missing])
    with pytest.raises(ImageError, match="does not exist"):
        images.find_images([root])


def test_a_file_given_as_a_folder_and_a_fifo_are_reported(tmp_path):
    photo = _save(tmp_path / "a.jpg")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    errors, on_error = _collect()
    assert images.find_images([f"{photo}/", fifo, tmp_path], on_error=on_error) == [photo]
    assert [m for _, m in errors][0].endswith("is a file, not a folder")
    assert [p for p, _ in errors] == [photo, fifo, fifo]


def test_names_that_are_not_utf8(tmp_path):
    folder = os.fsencode(tmp_path)
    name = os.path.join(folder, b"caf\xe9.jpg")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(name, format="JPEG")
    (found,) = images.find_images([tmp_path])
    assert os.fsencode(found) == name
    assert images.decode(found, (4, 4)).shape == (4, 4, 3)
    assert images.decode(name, None).shape == (8, 8, 3)  # bytes, as tf.data passes


# --- decode -------------------------------------------------------------------


class _ResizeSpy:
    """Records the size of every image `Image.resize` is called on."""

    def __init__(self, monkeypatch):
        self.sizes = []
        resize = Image.Image.resize
        spy = self

        def recording_resize(image, size, *args, **kwargs):
            spy.sizes.append(image.size)
            return resize(image, size, *args, **kwargs)

        monkeypatch.setattr(Image.Image, "resize", recording_resize)


@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory):
    """A 4000x3000 photo-like JPEG (a gradient with texture)."""
    y, x = np.mgrid[0:3000, 0:4000].astype(np.float32)
    pixels = np.stack([x / 16 % 256, y / 12, 128 + 100 * np.sin(x / 7 + y / 11)], -1)
    path = tmp_path_factory.mktemp("large") / "large.jpg"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=92)
    return path


@pytest.mark.parametrize("kind", ["JPEG", "MPO"])
def test_large_jpeg_is_decoded_at_a_reduced_scale(large_jpeg, monkeypatch, tmp_path, kind):
    path = large_jpeg
    if kind == "MPO":  # A phone's photo: more pictures after the first.
        path = tmp_path / "phone.jpg"
        with Image.open(large_jpeg) as first:
            first.save(path, "MPO", save_all=True, quality=92,
                       append_images=[Image.new("RGB", (40, 30), (9, 9, 9))])
        with Image.open(path) as opened:
            assert opened.format == "MPO"
    spy = _ResizeSpy(monkeypatch)
    x = images.decode(path, (299, 299))
    assert x.shape == (299, 299, 3) and x.dtype == np.float32
    # libjpeg decoded 1/4 scale (1000x750): still at least twice the target.
    assert spy.sizes == [(1000, 750)]
    # Close to a full-size decode resized the same way: only the
    # antialiasing differs.
    with Image.open(path) as full:
        reference = np.asarray(full.convert("RGB").resize((299, 299), Image.Resampling.BILINEAR),
                               dtype=np.float32)
    assert np.abs(x - reference).mean() < 2.0


@pytest.mark.parametrize("target, reduced", [((400, 100), True), ((100, 400), False)])
def test_draft_follows_exif_rotation_and_never_upscales(tmp_path, monkeypatch, target,
                                                         reduced):
    image = Image.new("RGB", (4000, 1000), (90, 120, 150))  # Stored landscape,
    exif = Image.Exif()
    exif[0x0112] = 6  # shown portrait (1000 wide, 4000 high).
    path = _save(tmp_path / "rotated.jpg", image, exif=exif.tobytes())
    spy = _ResizeSpy(monkeypatch)
    assert images.decode(path, target).shape == target + (3,)
    (width, height), = spy.sizes
    assert height >= 2 * target[0] and width >= 2 * target[1]  # never upscaled
    # Reduced where the stored image is large enough in both directions.
    assert (width * height < 4000 * 1000) == reduced


def test_decoded_at_the_requested_size_without_draft_for_small_photos(tmp_path, monkeypatch):
    path = _save(tmp_path / "a.jpg", Image.new("RGB", (750, 1000), (200, 30, 10)))
    spy = _ResizeSpy(monkeypatch)
    assert images.decode(path).shape == (299, 299, 3)
    assert spy.sizes == [(750, 1000)]  # 750 < 2 * 299: no reduced-scale decode
    assert images.decode(path, None).shape == (1000, 750, 3)


def test_palette_png_with_transparency_becomes_white(tmp_path):
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.paste(1, (0, 0, 5, 10))
    path = _save(tmp_path / "p.png", palette, transparency=0)
    x = images.decode(path, None)
    np.testing.assert_array_equal(x[0, 0], [10, 200, 30])
    np.testing.assert_array_equal(x[0, 9], [255, 255, 255])


def test_sixteen_bit_rgb_png_and_grayscale_jpeg(tmp_path):
    gray = _save(tmp_path / "g.jpg", Image.new("L", (16, 16), 90), quality=100)
    np.testing.assert_allclose(images.decode(gray, None), 90, atol=1)
    deep = np.full((8, 8, 3), [65535, 32768, 0], dtype=">u2")
    import io
    import struct
    import zlib

    # A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one).
    raw = b"".join(b"\x00" + row.tobytes() for row in deep)

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    png = io.BytesIO()
    png.write(b"\x89PNG\r\n\x1a\n")
    png.write(chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 16, 2, 0, 0, 0)))
    png.write(chunk(b"IDAT", zlib.compress(raw)))
    png.write(chunk(b"IEND", b""))
    path = tmp_path / "rgb16.png"
    path.write_bytes(png.getvalue())
    np.testing.assert_allclose(images.decode(path, None)[0, 0], [255, 128, 0], atol=1)


# --- full-size decoding -----------------------------------------------------------


def _full_size_photo(mode):
    """A 37 x 23 photo in `mode`: odd sizes, so the last strip of rows is short."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)
    if mode == "RGBA":
        return Image.fromarray(np.dstack([pixels, pixels[..., :1] // 2 + 64]))
    if mode == "I;16":
        return Image.fromarray(pixels[..., 0].astype(np.uint16) * 257 + 3)
    return Image.fromarray(pixels).convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "I;16"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_full_size_decode_is_the_upright_rgb_photo_in_float32_or_uint8(
        tmp_path, monkeypatch, mode, orientation):
    """`decode(path, None)` converts the stored rows a strip at a time, each
    written into its place in the upright array: the pixels are those of
    Pillow's `exif_transpose` and the RGB conversion on the whole image."""
    monkeypatch.setattr(images, "_STRIP_BYTES", 4 * 37 * 4)  # 4 rows per strip
    exif = Image.Exif()
    exif[0x0112] = orientation
    extra = {"transparency": 5} if mode == "P" else {}
    path = _save(tmp_path / "photo.png", _full_size_photo(mode), exif=exif, **extra)
    with Image.open(path) as stored:
        expected = np.asarray(images._to_rgb(ImageOps.exif_transpose(stored)))
    assert expected.shape == ((37, 23, 3) if orientation >= 5 else (23, 37, 3))
    for dtype in (None, "uint8", np.uint8, "float32"):
        x = images.decode(path, None) if dtype is None else images.decode(path, None, dtype=dtype)
        assert x.dtype == (np.float32 if dtype is None else np.dtype(dtype))
        assert x.flags.c_contiguous and x.flags.writeable
        np.testing.assert_array_equal(x, expected)
    # Resized, uint8 holds the float32 values rounded down (they are whole).
    np.testing.assert_array_equal(images.decode(path, (9, 11), dtype="uint8"),
                                  images.decode(path, (9, 11)).astype(np.uint8))


def test_full_size_decode_holds_the_result_and_one_strip(tmp_path, monkeypatch):
    """A 13000 x 13000 photo is 507 MB as uint8 and 2 GB as float32: the
    decoded array must be the only full-size copy NumPy or Python makes (no
    bytes of the whole image beside it). Pillow's own decoded image is not
    traced by tracemalloc, so what is measured is this module's copies."""
    import tracemalloc

    pixels = np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    path = _save(tmp_path / "photo.png", Image.fromarray(pixels), compress_level=1)
    monkeypatch.setattr(images, "_STRIP_BYTES", 64 * 1024)
    for kwargs in ({}, {"dtype": "uint8"}):
        tracemalloc.start()
        try:
            x = images.decode(path, None, **kwargs)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        np.testing.assert_array_equal(x, pixels)
        assert peak < x.nbytes + 2 * 2**20, (kwargs, peak, x.nbytes)
        del x


@pytest.mark.parametrize("dtype", ["float64", "int32", "rgb", None])
def test_decode_refuses_other_dtypes(tmp_path, dtype):
    path = _save(tmp_path / "a.png")
    with pytest.raises(ConfigError, match=rf"Received: dtype={dtype!r}"):
        images.decode(path, None, dtype=dtype)


def test_unreadable_files_are_one_line_image_errors_naming_the_path(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)  # Opening it for reading would block: it must not be read.
    dangling = tmp_path / "dangling.jpg"
    dangling.symlink_to(tmp_path / "nowhere.jpg")
    cases = {
        empty: "empty", text: "not an image", folder: "folder",
        fifo: "not a regular file", dangling: "does not exist",
        tmp_path / "missing.jpg": "not found",
    }
    for path, what in cases.items():
        with pytest.raises(ImageError) as info:
            images.decode(path)
        message = str(info.value)
        assert str(path) in message and what in message and "\n" not in message


def test_truncated_jpegs_are_errors_not_grey(tmp_path, large_jpeg):
    small = _save(tmp_path / "cut.jpg", Image.new("RGB", (200, 200), (1, 2, 3)))
    data = small.read_bytes()
    small.write_bytes(data[: len(data) // 2])
    large = tmp_path / "cut_large.jpg"
    data = large_jpeg.read_bytes()
    large.write_bytes(data[: len(data) // 2])  # Decoded with draft: still an error.
    for path, size in [(small, None), (large, (299, 299))]:
        with pytest.raises(ImageError, match="truncated") as info:
            images.decode(path, size)
        assert str(path) in str(info.value)


def test_pixel_limit_argument_and_environment(tmp_path, monkeypatch):
    path = _save(tmp_path / "wide.png", Image.new("RGB", (300, 200)))
    assert images.decode(path, (10, 10), max_pixels=60_000).shape == (10, 10, 3)
    with pytest.raises(ImageError) as info:
        images.decode(path, (10, 10), max_pixels=59_999)
    message = str(info.value)
    for part in [str(path), "300x200", "60,000", "59,999", "KERAS_XCEPTION_MAX_PIXELS",
                 "--max-pixels"]:
        assert part in message
    monkeypatch.setenv("KERAS_XCEPTION_MAX_PIXELS", "1000")
    with pytest.raises(ImageError, match="1,000"):
        images.decode(path)
    assert images.decode(path, max_pixels=60_000).shape == (299, 299, 3)
    monkeypatch.setenv("KERAS_XCEPTION_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="KERAS_XCEPTION_MAX_PIXELS='lots'"):
        images.decode(path)
    monkeypatch.delenv("KERAS_XCEPTION_MAX_PIXELS")
    assert images.max_pixels_limit() == images.MAX_PIXELS == 178_956_970
    for bad in [0, -5, 2.5, True]:
        with pytest.raises(ConfigError, match=f"max_pixels={bad!r}"):
            images.decode(path, max_pixels=bad)


def test_a_limit_above_pillows_needs_pillows_limit_raised(tmp_path, monkeypatch):
    path = _save(tmp_path / "a.png", Image.new("RGB", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above 2000
    with pytest.raises(ImageError, match="MAX_IMAGE_PIXELS"):
        images.decode(path, max_pixels=10**6)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert images.decode(path, max_pixels=10**6).shape == (299, 299, 3)


# --- iter_batches -----------------------------------------------------------------


@pytest.fixture
def photos(tmp_path):
    """Seven tiny photos, each a flat colour that encodes its index."""
    return [_save(tmp_path / f"{i}.png", Image.new("RGB", (12, 9), (i * 30, 0, 0)))
            for i in range(7)]


def test_batches_keep_order_are_full_and_skip_bad_files(photos, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    paths = photos[:2] + [bad] + photos[2:]
    errors, on_error = _collect()
    batches = list(images.iter_batches(paths, target_size=(5, 4), batch_size=3,
                                       on_error=on_error, workers=2))
    assert [b[0] for b in batches] == [photos[0:3], photos[3:6], photos[6:]]
    for batch_paths, array in batches:
        assert array.dtype == np.float32 and array.shape == (len(batch_paths), 5, 4, 3)
        for path, image in zip(batch_paths, array):
            np.testing.assert_allclose(image[..., 0], photos.index(path) * 30)
    assert [p for p, _ in errors] == [bad] and "bad.png" in errors[0][1]
    # Without on_error the bad file stops the stream with its ImageError.
    with pytest.raises(ImageError, match="bad.png"):
        list(images.iter_batches(paths, target_size=(5, 4), batch_size=3))


def test_preprocess_is_applied_per_batch(photos):
    from keras_xception import preprocess_input

    seen = []

    def preprocess(batch):
        seen.append(len(batch))
        return preprocess_input(batch)

    out = list(images.iter_batches(photos, target_size=(3, 3), batch_size=4,
                                   preprocess=preprocess))
    assert seen == [4, 3]
    assert out[0][1].min() >= -1 and out[0][1].max() <= 1
    np.testing.assert_allclose(out[0][1][0], -1.0)  # photo 0 is black


@pytest.mark.parametrize("kwargs", [
    {"batch_size": 0}, {"batch_size": -1}, {"workers": 0}, {"target_size": None},
    {"max_pixels": 0},
])
def test_bad_arguments(photos, kwargs):
    with pytest.raises(ConfigError):
        next(images.iter_batches(photos, **kwargs))


class _Live(np.ndarray):
    """An ndarray subclass that can be watched with weakref."""


def test_memory_is_bounded_by_a_few_batches_not_the_number_of_files(monkeypatch):
    lock = threading.Lock()
    live = {"now": 0, "most": 0}
    drawn = []

    def gone():
        with lock:
            live["now"] -= 1

    def fake_decode(path, target_size, *, max_pixels=None):
        array = np.zeros(target_size + (3,), np.float32).view(_Live)
        with lock:
            live["now"] += 1
            live["most"] = max(live["most"], live["now"])
        weakref.finalize(array, gone)
        return array

    def paths():  # A lazy input: how far has it been read?
        for i in range(400):
            drawn.append(i)
            yield f"{i}.jpg"

    monkeypatch.setattr(images, "decode", fake_decode)
    batch_size = 4
    stream = images.iter_batches(paths(), target_size=(2, 2), batch_size=batch_size,
                                 workers=2)
    next(stream)
    assert len(drawn) <= 3 * batch_size + 1  # Not the whole input.
    count = 1
    for _ in stream:
        count += 1
    assert count == 100
    assert live["most"] <= 2 * batch_size + 2


def test_closing_early_cancels_decoding_without_waiting(monkeypatch):
    release = threading.Event()
    started = []

    def slow_decode(path, target_size, *, max_pixels=None):
        started.append(path)
        if int(path) >= 2:
            release.wait(30)
        return np.zeros(target_size + (3,), np.float32)

    monkeypatch.setattr(images, "decode", slow_decode)
    stream = images.iter_batches([str(i) for i in range(100)], target_size=(2, 2),
                                 batch_size=2, workers=2)
    assert next(stream)[0] == ["0", "1"]
    closer = threading.Thread(target=stream.close)
    closer.start()
    closer.join(20)
    assert not closer.is_alive()  # close() did not wait for the blocked decodes
    before = len(started)
    release.set()
    assert before <= 2 + 2 * 2
    # The decodes not started when the stream closed never run.
    images_pool_threads = [t for t in threading.enumerate()
                           if t.name.startswith("keras_xception-decode")]
    for thread in images_pool_threads:
        thread.join(20)
    assert len(started) == before


def test_find_given_reports_a_folder_without_images(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"")  # Named explicitly: returned whatever it holds.
    problems = []
    record = lambda path, message: problems.append((path, message))  # noqa: E731
    assert images.find_given(empty, on_error=record) == []
    assert images.find_given(photo, on_error=record) == [photo]
    assert len(problems) == 1 and problems[0][0] == empty
    assert "no images found in" in problems[0][1] and str(empty) in problems[0][1]
