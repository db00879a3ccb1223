"""The OCR module on synthetic sheets (skipped, with the reason, without tesseract)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
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
    return dict(out["metadata"])


@needs_tesseract
def test_the_label_text_is_read(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path]
) -> None:
    got = _ocr(stub, tmp_path, sheets["specimen"])
    text = got["ocr_text"]
    for expected in ("NATURAL HISTORY MUSEUM", "Herbarium", "Denmark", "NHMD-100007"):
        assert expected in text
    assert got["ocr_language"] == "eng"
    assert 70 <= got["ocr_confidence"] <= 100


@needs_tesseract
def test_an_empty_label_gives_empty_text(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path]
) -> None:
    got = _ocr(stub, tmp_path, sheets["empty_label"])
    assert got == {"ocr_text": "", "ocr_language": "eng", "ocr_confidence": None}


@needs_tesseract
def test_a_region_narrows_what_is_read(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASSCO_OCR_REGION", "0,0,0.4,0.5")  # top left: the plant only
    assert _ocr(stub, tmp_path, sheets["specimen"])["ocr_text"] == ""


@needs_tesseract
def test_a_missing_language_pack_fails_for_good(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASSCO_OCR_LANG", "xxx")
    with pytest.raises(ModuleFailed, match="language") as caught:
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
        seen["threads"] = ocr.os.environ.get("OMP_THREAD_LIMIT")
        if isinstance(image, str):
            seen["header"] = Path(image).read_bytes()[:2]
        return {"text": [], "conf": [], "block_num": [], "par_num": [], "line_num": []}

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


def test_an_operators_tesseract_thread_limit_is_kept(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_THREAD_LIMIT", "4")
    seen = _capture_tesseract_call(monkeypatch)
    _ocr(stub, tmp_path, sheets["specimen"])
    assert seen["threads"] == "4"
