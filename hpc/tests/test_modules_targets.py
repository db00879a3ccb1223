"""Device targets recognised from the image, and the barcode reader over the varied corpus:
codes of different sizes and angles, or none; specimen sheets never taken for targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dassco_hpc import synthetic
from dassco_hpc.convention import Convention
from dassco_hpc.modules import barcode
from dassco_hpc.results import normalise
from dassco_hpc.targets import find_target
from listener_stub import StubListener
from module_fixtures import context, with_image

pytest.importorskip(
    "cv2", reason="opencv-python-headless not installed (pip install './hpc[modules]')"
)
SIZE = (1000, 1500)


def _run(stub: StubListener, tmp_path: Path, image: Path) -> dict[str, Any]:
    ctx = context(stub, tmp_path / "work")
    with_image(ctx.workdir, image)
    out = barcode.run(ctx)
    assert normalise(out) == {**normalise(None), **out}  # the listener's contract
    return out


@pytest.mark.parametrize("kind", ["colour_checker", "grey_scale"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_uncoded_target_is_recognised_and_marked(
    stub: StubListener, tmp_path: Path, kind: str, seed: int
) -> None:
    image = tmp_path / "target.tif"
    synthetic.write(image, kind, SIZE, seed, noise=3, variation=synthetic.varied(seed))
    out = _run(stub, tmp_path, image)
    assert out["barcode"]["asset_subject"] == "device target"
    how = out["metadata"]["tags"]["device_target"]
    assert how.startswith("recognised: " + kind.replace("_", " ")), how


def test_a_coded_target_is_marked_by_its_code(stub: StubListener, tmp_path: Path) -> None:
    image = tmp_path / "target.tif"
    synthetic.write(image, "target", SIZE, 4)
    out = _run(stub, tmp_path, image)
    assert out["barcode"]["asset_subject"] == "device target"
    assert out["metadata"]["tags"]["device_target"] == "printed code CT-0004"


def test_image_detection_can_be_turned_off(
    stub: StubListener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASSCO_TARGET_DETECTION", "0")
    image = tmp_path / "target.tif"
    synthetic.write(image, "colour_checker", SIZE, 1)
    out = _run(stub, tmp_path, image)
    assert out["barcode"]["asset_subject"] == "specimen" and "metadata" not in out


@pytest.mark.parametrize("seed", range(1, 13))
def test_varied_sheets_keep_their_codes_and_are_never_targets(
    stub: StubListener, tmp_path: Path, seed: int
) -> None:
    """Labels anywhere, colour bars, codes of 8-22 px modules at any angle or missing,
    texture and uneven light: the codes drawn are read, and no sheet is a target."""
    kind = ("specimen", "mso", "no_barcode", "mos_specimen", "empty_label", "mos_label")[seed % 6]
    variation = synthetic.varied(seed)
    image = tmp_path / ("sheet.jpg" if seed % 3 == 0 else "sheet.tif")
    drawn = synthetic.write(image, kind, SIZE, seed, noise=3, variation=variation)
    out = _run(stub, tmp_path, image)
    assert out["barcode"] == Convention().classify(drawn.payloads).result
    assert "metadata" not in out


def test_a_colour_bar_beside_a_specimen_is_not_a_target() -> None:
    variation = synthetic.Variation(colour_bar=True, code=False)
    img, drawn = synthetic.draw("no_barcode", SIZE, 1, variation=variation)
    assert drawn.payloads == [] and find_target(img) is None


@pytest.mark.parametrize(("module_px", "angle"), [(4, 0.0), (8, 90.0), (14, 33.0), (22, 200.0)])
def test_data_matrix_of_any_size_and_angle_is_read(
    stub: StubListener, tmp_path: Path, module_px: int, angle: float
) -> None:
    image = tmp_path / "sheet.tif"
    variation = synthetic.Variation(code_px=module_px, code_angle=angle)
    drawn = synthetic.write(image, "specimen", SIZE, 9, noise=3, variation=variation)
    assert _run(stub, tmp_path, image)["barcode"]["barcodes"] == drawn.payloads == ["NHMD-100009"]


def test_target_found_is_described_where_it_is() -> None:
    img, _ = synthetic.draw("colour_checker", SIZE, 2)
    found = find_target(img)
    assert found is not None
    assert (found.kind, found.rows, found.columns, found.patches) == ("colour checker", 4, 6, 24)
    left, top, right, bottom = found.box
    assert 0 < left < right < SIZE[0] and 0 < top < bottom < SIZE[1]
    assert (right - left) > 0.4 * SIZE[0]
