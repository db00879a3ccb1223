"""The OCR module on synthetic sheets (skipped, with the reason, without tesseract)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from dassco_hpc import synthetic
from dassco_hpc.errors import ModuleFailed
from dassco_hpc.modules import ocr
from dassco_hpc.results import normalise
from listener_stub import StubListener
from module_fixtures import context, with_image

pytesseract = pytest.importorskip(
    "pytesseract", reason="pytesseract not installed (pip install './hpc[modules]')"
)
needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None,
    reason="the tesseract binary is not installed (Debian: apt-get install tesseract-ocr)",
)


def _ocr(stub: StubListener, tmp_path: Path, image: Path) -> dict[str, Any]:
    ctx = context(stub, tmp_path / "work", job="ocr")
    with_image(ctx.workdir, image)
    out = ocr.run(ctx)
    assert normalise(out)["metadata"] == out["metadata"]
    assert set(out["metadata"]) == {"tags"}  # everything a curator needs is in the tags
    return dict(out["metadata"]["tags"])


def _words(lines: list[str]) -> list[str]:
    return [w for line in lines for w in line.split()]


def _inside(box: list[int], outer: tuple[int, int, int, int], slack: int = 4) -> bool:
    return (
        box[0] >= outer[0] - slack and box[1] >= outer[1] - slack
        and box[2] <= outer[2] + slack and box[3] <= outer[3] + slack
    )  # fmt: skip


@needs_tesseract
def test_the_label_text_is_read_with_words_confidences_and_boxes(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path]
) -> None:
    got = _ocr(stub, tmp_path, sheets["specimen"])
    text = got["ocr"]
    for expected in ("NATURAL HISTORY MUSEUM", "Herbarium", "Denmark", "NHMD-100007"):
        assert expected in text
    assert got["ocr_status"] == "TEXT_FOUND"
    assert got["ocr_language"] == "dan+eng+lat"
    assert 70 <= got["ocr_confidence"] <= 100
    # Each word says where it was read: on the label, in the image's pixels.
    drawn = synthetic.draw("specimen", (1200, 1800), seed=7)[1]
    assert drawn.label_box is not None
    words = got["ocr_words"]
    assert [w["text"] for w in words[:4]] == ["NATURAL", "HISTORY", "MUSEUM", "OF"]
    for word in words:
        assert word["image"] == "specimen.tif" and 50 <= word["confidence"] <= 100
        assert _inside(word["box"], drawn.label_box), word
    assert got["ocr_label_box"]["image"] == "specimen.tif"
    box = got["ocr_label_box"]["box"]
    label = drawn.label_box
    # The label box found holds the drawn label, and not much more.
    assert _inside(list(label), tuple(box), slack=2)
    assert (box[2] - box[0]) * (box[3] - box[1]) < 2 * (label[2] - label[0]) * (label[3] - label[1])


VARIATIONS = {
    "label top left": synthetic.Variation(label_at=(0.03, 0.05)),
    "small text": synthetic.Variation(text_scale=0.7, label_at=(0.4, 0.75)),
    "large text": synthetic.Variation(text_scale=1.3, label_at=(0.1, 0.7)),
    "rotated +5": synthetic.Variation(rotation=5.0),
    "rotated -5": synthetic.Variation(rotation=-5.0),
    "serif font": synthetic.Variation(
        font="/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf"
    ),
    "handwriting-like font": synthetic.Variation(font=synthetic.HANDWRITING_FONTS[0]),
    "Danish": synthetic.Variation(language="da"),
    "Latin": synthetic.Variation(language="la"),
    "paper texture, uneven light": synthetic.Variation(texture=1.0, illumination=0.3),
    "specimen over the label": synthetic.Variation(overlap=True, label_at=(0.3, 0.6)),
}


@needs_tesseract
@pytest.mark.parametrize("name", list(VARIATIONS))
def test_labels_are_found_and_read_however_they_vary(
    stub: StubListener, tmp_path: Path, name: str
) -> None:
    variation = VARIATIONS[name]
    if variation.font and not Path(variation.font).is_file():
        pytest.skip(f"font {variation.font} not installed (tests/infra/install_packages.sh)")
    image = tmp_path / "sheet.tif"
    drawn = synthetic.write(image, "specimen", (1200, 1800), seed=11, noise=3,
                            variation=variation)  # fmt: skip
    got = _ocr(stub, tmp_path, image)
    read = {w["text"] for w in got["ocr_words"]}
    expected = _words(drawn.label_lines)
    missed = [w for w in expected if w not in read]
    assert len(missed) <= 0.1 * len(expected), missed
    # Lines come in reading order, also from a label glued on askew.
    assert got["ocr"].split()[0] == expected[0]
    assert drawn.label_box is not None
    assert all(_inside(w["box"], drawn.label_box, slack=8) for w in got["ocr_words"])


@needs_tesseract
def test_a_jpeg_scan_is_read(stub: StubListener, tmp_path: Path) -> None:
    image = tmp_path / "sheet.jpg"
    drawn = synthetic.write(image, "specimen", (1200, 1800), seed=5, quality=80,
                            variation=synthetic.Variation(language="da"))  # fmt: skip
    read = {w["text"] for w in _ocr(stub, tmp_path, image)["ocr_words"]}
    expected = _words(drawn.label_lines)
    assert sum(w in read for w in expected) >= 0.9 * len(expected)


@needs_tesseract
def test_an_empty_label_says_no_text_with_the_reason(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path]
) -> None:
    got = _ocr(stub, tmp_path, sheets["empty_label"])
    assert got["ocr_status"] == "NO_TEXT" and got["ocr"] == ""
    assert got["ocr_reason"] == "no text block was found on the image(s)"
    assert got["ocr_words"] == [] and got["ocr_confidence"] is None
    assert got["ocr_label_box"] is None


@needs_tesseract
def test_a_region_narrows_what_is_read(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASSCO_OCR_REGION", "0,0,0.4,0.5")  # top left: the plant only
    got = _ocr(stub, tmp_path, sheets["specimen"])
    assert got["ocr_status"] == "NO_TEXT" and got["ocr_reason"]


@needs_tesseract
def test_unreadable_marks_say_no_word_was_read(
    stub: StubListener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text too faint to trust: the blocks are found, the words fall below the threshold."""
    monkeypatch.setenv("DASSCO_OCR_MIN_CONFIDENCE", "100")
    image = tmp_path / "sheet.tif"
    synthetic.write(
        image,
        "specimen",
        (1200, 1800),
        seed=2,
        variation=synthetic.Variation(font=synthetic.HANDWRITING_FONTS[0]),
    )
    got = _ocr(stub, tmp_path, image)
    assert got["ocr_status"] == "NO_TEXT"
    assert "text block(s) found, but no word was read with confidence >= 100" in got["ocr_reason"]


@needs_tesseract
def test_a_missing_language_pack_fails_for_good(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASSCO_OCR_LANG", "xxx")
    with pytest.raises(ModuleFailed, match="tesseract-ocr-xxx") as caught:
        _ocr(stub, tmp_path, sheets["specimen"])
    assert caught.value.retryable is False


def test_no_tesseract_binary_fails_for_good_naming_the_package(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", str(tmp_path / "no-such"))
    with pytest.raises(ModuleFailed, match="tesseract-ocr") as caught:
        _ocr(stub, tmp_path, sheets["specimen"])
    assert caught.value.retryable is False


@pytest.mark.parametrize("region", ["1,2,3", "0.5,0,0.4,1", "a,b,c,d"])
def test_bad_regions_are_refused(region: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModuleFailed, match="DASSCO_OCR_REGION"):
        ocr.region({"DASSCO_OCR_REGION": region})


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
def test_an_unreadable_image_fails_for_good(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path]
) -> None:
    with pytest.raises(ModuleFailed, match="unreadable") as caught:
        _ocr(stub, tmp_path, sheets["corrupt"])
    assert caught.value.retryable is False


def _capture_tesseract_call(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace tesseract with a recorder of what it would have been given."""
    seen: dict[str, Any] = {}

    def image_to_data(image: Any, **kwargs: Any) -> dict[str, list[Any]]:
        seen["image"] = image
        seen["config"] = kwargs.get("config")
        seen["threads"] = ocr.os.environ.get("OMP_THREAD_LIMIT")
        if isinstance(image, str):
            seen["header"] = Path(image).read_bytes()[:2]
        return {k: [] for k in ("text", "conf", "left", "top", "width", "height",
                                "block_num", "par_num", "line_num")}  # fmt: skip

    monkeypatch.setattr(pytesseract, "image_to_data", image_to_data)
    return seen


def test_tesseract_reads_an_uncompressed_page_with_one_thread(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_THREAD_LIMIT", "unset below")  # so that teardown restores it
    monkeypatch.delenv("OMP_THREAD_LIMIT")
    seen = _capture_tesseract_call(monkeypatch)
    _ocr(stub, tmp_path, sheets["specimen"])
    assert seen["threads"] == "1"
    assert isinstance(seen["image"], str) and seen["header"] == b"P5"  # a binary PGM file
    assert seen["config"] == "--psm 11"  # sparse text: a label is not a page


def test_an_operators_tesseract_thread_limit_is_kept(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_THREAD_LIMIT", "4")
    seen = _capture_tesseract_call(monkeypatch)
    _ocr(stub, tmp_path, sheets["specimen"])
    assert seen["threads"] == "4"


@needs_tesseract
def test_data_matrix_blocks_are_not_read_as_text(stub: StubListener, tmp_path: Path) -> None:
    image = tmp_path / "sheet.tif"
    drawn = synthetic.write(image, "mso", (1200, 1800), seed=17, noise=3,
                            variation=synthetic.Variation(code_px=18, code_angle=45))  # fmt: skip
    logs: list[str] = []
    ctx = context(stub, tmp_path / "work", job="ocr", logs=logs)
    with_image(ctx.workdir, image)
    words = ocr.run(ctx)["metadata"]["tags"]["ocr_words"]
    # The codes are either no text block at all or a block known for a code, never read.
    read = [line for line in logs if "word(s)" in line and ": 0 word(s)" not in line]
    assert len(read) == 1, logs
    assert drawn.label_box is not None
    assert words and all(_inside(w["box"], drawn.label_box, slack=8) for w in words)


@needs_tesseract
@pytest.mark.parametrize("spacing", [1.3, 3.0])
def test_a_plain_label_of_small_widely_spaced_lines_is_read_whole(
    stub: StubListener, tmp_path: Path, spacing: float
) -> None:
    """Drawn here, not by the generator: no border, no label card, dark blue ink, text 1/60
    of the sheet's width, lines up to three font sizes apart."""
    from PIL import Image, ImageDraw

    lines = [
        "Herbarium Universitatis Hauniensis",
        "Geranium sylvaticum L.",
        "Rold Skov, near Arden",
        "Leg. P. Nielsen 12.7.1961",
        "Det. B. Olsen 1987",
    ]
    img = Image.new("RGB", (1200, 1800), (245, 240, 228))
    draw = ImageDraw.Draw(img)
    draw.line([(400, 1300), (380, 100)], fill=(80, 90, 50), width=8)
    face = synthetic.font(20, "/usr/share/fonts/truetype/freefont/FreeSerif.ttf")
    for n, line in enumerate(lines):
        draw.text((650, 1250 + round(n * 20 * spacing)), line, fill=(20, 30, 90), font=face)
    image = tmp_path / "plain.tif"
    img.save(image, compression="tiff_lzw")
    got = _ocr(stub, tmp_path, image)
    read = {w["text"] for w in got["ocr_words"]}
    expected = _words(lines)
    assert sum(w in read for w in expected) >= 0.9 * len(expected), got["ocr"]
    assert len(got["ocr"].splitlines()) == len(lines)


@needs_tesseract
def test_a_leaf_across_an_askew_label_does_not_spoil_the_line_order(
    stub: StubListener, tmp_path: Path
) -> None:
    """The leaf joins the smeared lines into one blob; the skew comes from single lines."""
    from dataclasses import replace

    image = tmp_path / "sheet.tif"
    variation = replace(synthetic.varied(102), code=True)
    assert variation.overlap and variation.rotation < -3
    drawn = synthetic.write(image, "specimen", (1200, 1800), 102, variation=variation)
    got = _ocr(stub, tmp_path, image)
    assert got["ocr"].splitlines()[0] == drawn.label_lines[0], got["ocr"]
