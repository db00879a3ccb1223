"""The HERB0001 image modules on a handful of sheets from the second, independently written
generator (`dasscod.devstack.field_sheets`): scanned sideways or upside down, 16-bit, CMYK,
faded ink, several codes, a device target, and files that are no image. Each must give the
sheet's codes and most of its label, or a clear non-retryable failure. The larger corpus is
in the bench (`python -m dasscod.devstack.bench_field_sheets`)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("zxingcpp", reason="zxing-cpp not installed (pip install './hpc[modules]')")
pytest.importorskip("cv2", reason="opencv not installed (pip install './hpc[modules]')")

from dassco_hpc.modules import barcode, derivatives, ocr

from dasscod.devstack import field_sheets
from dasscod.devstack.bench_field_sheets import Recorder, context, outcome_of

needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None,
    reason="the tesseract binary is not installed (Debian: apt-get install tesseract-ocr)",
)

#: (seed, kind): each drawn at 150 DPI, what it shows is in its truth.
SHEETS = {
    "three codes, turned 90, 16-bit PNG, faded ink": (9, "mso"),
    "turned 180, PackBits grey TIFF, faded ink": (1, "specimen"),
    "turned 270, 16-bit TIFF, handwritten slip": (20, "specimen"),
}


def _write(tmp_path: Path, seed: int, kind: str) -> field_sheets.Truth:
    _, truth = field_sheets.write(tmp_path / "work", seed, dpi=150, kind=kind)
    return truth


def _run(module: Any, tmp_path: Path, name: str) -> tuple[str, Any, str]:
    return outcome_of(module, context(tmp_path / "work", "asset-1", name, Recorder()))


@needs_tesseract
@pytest.mark.parametrize("name", list(SHEETS))
def test_codes_and_label_are_read_however_the_sheet_was_scanned(
    tmp_path: Path, name: str
) -> None:
    truth = _write(tmp_path, *SHEETS[name])
    outcome, result, detail = _run(barcode, tmp_path, "barcode")
    assert outcome == "ok", detail
    assert sorted(result["barcode"]["barcodes"]) == sorted(truth.barcodes), truth.notes
    assert result["barcode"]["MSO"] == (len(truth.barcodes) > 1)
    outcome, result, detail = _run(ocr, tmp_path, "ocr")
    assert outcome == "ok", detail
    read = Counter(str(w["text"]) for w in result["metadata"]["tags"]["ocr_words"])
    printed = Counter(
        w for field, text in truth.fields.items() if field != "determination" for w in text.split()
    )
    hits = sum(min(n, read[w]) for w, n in printed.items())
    assert hits >= 0.8 * sum(printed.values()), (truth.notes, dict(read))
    outcome, result, detail = _run(derivatives, tmp_path, "derivatives")
    assert outcome == "ok", detail
    assert len(result["derivatives"]) == 2


def test_a_colour_checker_is_a_device_target(tmp_path: Path) -> None:
    truth = _write(tmp_path, 8, "colour_checker")
    outcome, result, detail = _run(barcode, tmp_path, "barcode")
    assert outcome == "ok", detail
    assert truth.is_target and result["barcode"]["asset_subject"] == "device target"


@pytest.mark.parametrize("seed", [1, 2, 5, 9])
def test_a_file_that_is_no_image_fails_clearly_in_every_module(tmp_path: Path, seed: int) -> None:
    truth = _write(tmp_path, seed, "broken")
    for module, name in ((barcode, "barcode"), (ocr, "ocr"), (derivatives, "derivatives")):
        outcome, _, detail = _run(module, tmp_path, name)
        assert outcome == "failed", (truth.file_format, name, detail)
        assert truth.name in detail, detail  # names the file


def test_the_broken_files_cover_every_way_of_breaking() -> None:
    ways = {field_sheets.sheet(seed, kind="broken")[2].file_format for seed in (1, 2, 5, 9)}
    assert ways == {"truncated", "empty", "text", "huge"}
