"""What scanners and cameras write, as the modules receive it: every file either gives the
sheet's codes and text, or a clear non-retryable failure (never a traceback, never a white page
read as "no barcode")."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dassco_hpc import synthetic
from dassco_hpc.errors import ModuleFailed
from dassco_hpc.imaging import open_image
from dassco_hpc.modules import barcode, derivatives, ocr
from listener_stub import StubListener
from module_fixtures import context, with_image

np = pytest.importorskip("numpy", reason="numpy not installed (pip install './hpc[modules]')")
Image = pytest.importorskip("PIL.Image", reason="Pillow not installed")
needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None,
    reason="the tesseract binary is not installed (Debian: apt-get install tesseract-ocr)",
)


def _grey16(img: Any, bits: int = 16) -> Any:
    """The sheet as deep grey: 8-bit values spread over `bits` bits."""
    grey = np.asarray(img.convert("L"), dtype=np.uint16)
    return Image.fromarray((grey * ((2**bits - 1) // 255)).astype(np.uint16))


def _exif_turned(img: Any, out: Path) -> None:
    """Pixels stored turned a quarter to the left, the Orientation tag (6) saying how to turn
    them back, as a camera writes them."""
    exif = Image.Exif()
    exif[0x0112] = 6
    img.transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=92, exif=exif)


def _transparent(img: Any, out: Path) -> None:
    """RGBA whose paper is transparent black: read as is, the sheet would be black."""
    rgba = img.convert("RGBA")
    arr = np.array(rgba)
    paper = arr[..., :3].min(axis=2) > 200
    arr[paper] = (0, 0, 0, 0)
    Image.fromarray(arr).save(out, "PNG")


WRITERS: dict[str, tuple[str, Callable[[Any, Path], None]]] = {
    "16-bit grey PNG": (".png", lambda img, out: _grey16(img).save(out, "PNG")),
    "12-bit grey in a 16-bit TIFF": (".tif", lambda img, out: _grey16(img, 12).save(out, "TIFF")),
    "CMYK JPEG": (".jpg", lambda img, out: img.convert("CMYK").save(out, "JPEG", quality=92)),
    "CMYK TIFF": (".tif", lambda img, out: img.convert("CMYK").save(out, "TIFF")),
    "palette PNG": (".png", lambda img, out: img.quantize(64).save(out, "PNG")),
    "transparent RGBA PNG": (".png", _transparent),
    "EXIF-turned JPEG": (".jpg", _exif_turned),
    "bilevel TIFF": (
        ".tif", lambda img, out: img.convert("1", dither=Image.Dither.NONE).save(out, "TIFF")
    ),
}


@pytest.fixture(scope="module")
def drawn() -> tuple[Any, synthetic.Sheet]:
    return synthetic.draw("specimen", (1200, 1800), seed=5)


@pytest.mark.parametrize("how", list(WRITERS))
def test_every_image_mode_gives_the_upright_8_bit_sheet(
    tmp_path: Path, drawn: tuple[Any, synthetic.Sheet], how: str
) -> None:
    img, _ = drawn
    suffix, writer = WRITERS[how]
    path = tmp_path / f"sheet{suffix}"
    writer(img, path)
    got = open_image(path)
    assert got.mode in ("RGB", "L") and got.size == img.size
    # The same picture: the paper is light and the ink dark wherever they were.
    reference = np.asarray(img.convert("L"), dtype=np.int16)
    seen = np.asarray(got.convert("L"), dtype=np.int16)
    assert np.mean(np.abs(reference - seen) < 64) > 0.97


@pytest.mark.parametrize("how", ["16-bit grey PNG", "CMYK JPEG", "palette PNG", "EXIF-turned JPEG"])
def test_the_code_is_read_whatever_the_file_mode(
    stub: StubListener, tmp_path: Path, drawn: tuple[Any, synthetic.Sheet], how: str
) -> None:
    img, sheet = drawn
    suffix, writer = WRITERS[how]
    path = tmp_path / f"sheet{suffix}"
    writer(img, path)
    ctx = context(stub, tmp_path / "work")
    with_image(ctx.workdir, path)
    assert barcode.run(ctx)["barcode"]["barcodes"] == sheet.payloads


def test_the_largest_page_of_a_tiff_is_the_scan(
    tmp_path: Path, drawn: tuple[Any, synthetic.Sheet]
) -> None:
    img, _ = drawn
    preview = img.copy()
    preview.thumbnail((200, 200))
    path = tmp_path / "pages.tif"
    preview.save(path, "TIFF", save_all=True, append_images=[img])
    assert open_image(path).size == img.size


def _huge_png(path: Path, width: int, height: int) -> None:
    """A valid PNG header claiming width x height over a few bytes of data."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 99))
        + chunk(b"IEND", b"")
    )  # fmt: skip


@pytest.mark.parametrize("mpixels", [60000 * 60000 / 1e6, 500.0])
def test_an_image_over_the_pixel_limit_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mpixels: float
) -> None:
    # Over twice the limit Pillow refuses at the header; between once and twice it only
    # warns, and the module must refuse all the same.
    side = round((mpixels * 1e6) ** 0.5)
    path = tmp_path / "huge.png"
    _huge_png(path, side, side)
    monkeypatch.setenv("DASSCO_MAX_IMAGE_MPIXELS", "400")
    with pytest.raises(ModuleFailed, match="DASSCO_MAX_IMAGE_MPIXELS") as caught:
        open_image(path)
    assert caught.value.retryable is False


BROKEN: dict[str, Callable[[Path], None]] = {
    "empty file": lambda p: p.write_bytes(b""),
    "an HTML error page": lambda p: p.write_bytes(b"<html>502 Bad Gateway</html>\n"),
    "truncated JPEG": lambda p: p.write_bytes(_jpeg()[:2000]),
    "PNG with a bad header": lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40),
}


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (800, 1200), (240, 235, 220)).save(out, "JPEG")
    return out.getvalue()


@pytest.mark.parametrize("how", list(BROKEN))
@pytest.mark.parametrize("module", [barcode, ocr])
def test_a_file_that_is_no_image_is_a_clear_failure(
    stub: StubListener, tmp_path: Path, how: str, module: Any
) -> None:
    ctx = context(stub, tmp_path / "work", job=module.__name__.rsplit(".", 1)[1])
    BROKEN[how](ctx.workdir / "sheet.jpg")
    with pytest.raises(ModuleFailed, match=r"sheet\.jpg: (unreadable|malformed)") as caught:
        module.run(ctx)
    assert caught.value.retryable is False


def test_derivatives_report_a_broken_file(stub: StubListener, tmp_path: Path) -> None:
    ctx = context(stub, tmp_path / "work", job="derivatives")
    BROKEN["truncated JPEG"](ctx.workdir / "sheet.jpg")
    with pytest.raises(ModuleFailed, match="no derivative"):
        derivatives.run(ctx)
    assert stub.to("/assets/asset-1/derivative-failed")


@needs_tesseract
@pytest.mark.parametrize("turn", [90, 180, 270])
def test_a_sheet_scanned_sideways_or_upside_down_is_read(
    stub: StubListener, tmp_path: Path, turn: int
) -> None:
    img, sheet = synthetic.draw("specimen", (1200, 1800), seed=11, noise=3)
    path = tmp_path / "turned.tif"
    img.rotate(turn, expand=True).save(path, compression="tiff_lzw")
    ctx = context(stub, tmp_path / "work", job="ocr")
    with_image(ctx.workdir, path)
    tags = ocr.run(ctx)["metadata"]["tags"]
    expected = [w for line in sheet.label_lines for w in line.split()]
    read = {w["text"] for w in tags["ocr_words"]}
    missed = [w for w in expected if w not in read]
    assert len(missed) <= 0.1 * len(expected), missed
    assert tags["ocr"].split()[0] == expected[0]  # read in the label's own reading order
    # Boxes are where the words are in the file as stored (turned), not on the turned page.
    assert sheet.label_box is not None
    corners = [(sheet.label_box[0], sheet.label_box[1]), (sheet.label_box[2], sheet.label_box[3])]
    w, h = img.size
    turned = [_turn_point(x, y, turn, w, h) for x, y in corners]
    xs, ys = [p[0] for p in turned], [p[1] for p in turned]
    for word in tags["ocr_words"]:
        left, top, right, bottom = word["box"]
        assert min(xs) - 8 <= left and right <= max(xs) + 8
        assert min(ys) - 8 <= top and bottom <= max(ys) + 8


def _turn_point(x: float, y: float, turn: int, w: int, h: int) -> tuple[float, float]:
    """Where a point of a w x h image is once the image is turned counter-clockwise."""
    if turn == 90:
        return y, w - x
    if turn == 180:
        return w - x, h - y
    return h - y, x


def _tiny_code(payload: str, module_px: float, angle: float) -> Any:
    """A Data Matrix at a fractional module size under 2 px, antialiased, turned."""
    import zxingcpp

    code = zxingcpp.create_barcode(payload, zxingcpp.BarcodeFormat.DataMatrix)
    dark = np.pad(np.asarray(code.to_image(scale=1, add_quiet_zones=False)) < 128, 2)
    fine = Image.fromarray(np.where(dark, 0, 255).astype(np.uint8)).resize(
        (dark.shape[1] * 8, dark.shape[0] * 8), Image.Resampling.NEAREST
    )
    side = round(dark.shape[0] * module_px)
    small = fine.resize((side, side), Image.Resampling.BOX)
    return small.rotate(angle, expand=True, fillcolor=255, resample=Image.Resampling.BICUBIC)


@pytest.mark.parametrize(("module_px", "angle"), [(1.3, 0.0), (1.4, 45.0), (1.6, 62.0)])
def test_a_code_too_small_for_the_scan_is_read_enlarged(
    stub: StubListener, tmp_path: Path, module_px: float, angle: float
) -> None:
    # A low-resolution JPEG scan: the code's modules are under 2 px, which zxing does not
    # read at the scan's size.
    img, _ = synthetic.draw("no_barcode", (900, 1350), seed=4)
    img.paste(_tiny_code("NHMD-204711", module_px, angle).convert("RGB"), (620, 90))
    path = tmp_path / "low-res.jpg"
    img.save(path, quality=60)
    ctx = context(stub, tmp_path / "work")
    with_image(ctx.workdir, path)
    assert barcode.run(ctx)["barcode"]["barcodes"] == ["NHMD-204711"]
