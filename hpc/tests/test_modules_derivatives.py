"""The derivatives module: crop, JPEG and thumbnail, registered through the stub listener."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import pytest
from dassco_hpc.errors import ModuleFailed
from dassco_hpc.imaging import content_box
from dassco_hpc.modules import derivatives
from dassco_hpc.results import normalise
from listener_stub import StubListener
from module_fixtures import GUID, PARENT_METADATA, SIZE, context, with_image

Image = pytest.importorskip("PIL.Image", reason="Pillow not installed")


def test_the_crop_removes_the_scanner_background(sheets: dict[str, Path]) -> None:
    with Image.open(sheets["specimen"]) as img:
        left, top, right, bottom = content_box(img)
    # The paper spans 4.5 % .. 95.5 % of the width and 3.5 % .. 96.5 % of the height.
    width, height = SIZE
    assert abs(left - 0.045 * width) <= 15 and abs(right - 0.955 * width) <= 15
    assert abs(top - 0.035 * height) <= 15 and abs(bottom - 0.965 * height) <= 15


def test_a_sheet_without_background_is_kept_whole() -> None:
    img = Image.new("RGB", (600, 900), (240, 238, 230))
    assert content_box(img) == (0, 0, 600, 900)


def test_derivatives_are_written_and_registered(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASSCO_DERIVATIVE_MAX_PX", "1000")
    stub.gets[f"/assets/{GUID}/metadata"] = PARENT_METADATA
    ctx = context(stub, tmp_path / "work", job="derivatives")
    with_image(ctx.workdir, sheets["specimen"], f"{GUID}.tif")
    out = derivatives.run(ctx)
    assert (
        normalise(out)["derivatives"]
        == out["derivatives"]
        == [
            f"{GUID}-jpeg",
            f"{GUID}-thumb",
        ]
    )
    registered = [r.body for r in stub.to("/derivatives")]
    assert [b["asset_guid"] for b in registered] == out["derivatives"]
    for body, payload_type in zip(registered, ["image", "thumbnail"], strict=True):
        assert body["parent_guid"] == GUID
        assert body["payload_type"] == payload_type and body["file_format"] == "jpeg"
        assert body["institution"] == "NHMD" and "asset_pid" not in body
    for guid, longest in ((f"{GUID}-jpeg", 1000), (f"{GUID}-thumb", 400)):
        path = ctx.workdir / "derivatives" / f"{guid}.jpg"
        with Image.open(path) as img:
            assert img.format == "JPEG" and max(img.size) == longest
            # Cropped: the portrait sheet keeps its proportions, without the dark margin.
            assert 1.4 < img.height / img.width < 1.6
            grey = img.convert("L")
            inset = max(2, round(max(img.size) * 0.01))
            for xy in ((inset, img.height // 2), (img.width // 2, img.height - inset)):
                assert grey.getpixel(xy) > 200  # paper, not the scanner background
        (file_call,) = stub.to(f"/assets/{guid}/files")
        data = path.read_bytes()
        assert file_call.body == {
            "name": f"{guid}.jpg",
            "type": "jpg",
            "check_sum": zlib.crc32(data),
            "file_size": len(data) / 1_000_000,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    assert not stub.to(f"/assets/{GUID}/derivative-failed")


def test_derivative_guids_stay_within_the_listeners_limit() -> None:
    long = "a" * 199
    guid = derivatives.derivative_guid(long, "thumb")
    assert len(guid) <= 200 and guid.endswith("-thumb")
    assert guid == derivatives.derivative_guid(long, "thumb")
    assert guid != derivatives.derivative_guid("a" * 198 + "b", "thumb")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
@pytest.mark.parametrize("bad", ["corrupt", "not_an_image"])
def test_an_unreadable_image_is_reported_as_derivative_failed(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path], bad: str
) -> None:
    ctx = context(stub, tmp_path / "work", job="derivatives")
    with_image(ctx.workdir, sheets[bad], f"{GUID}.tif")
    with pytest.raises(ModuleFailed, match="unreadable image") as caught:
        derivatives.run(ctx)
    assert caught.value.retryable is False
    (report,) = stub.to(f"/assets/{GUID}/derivative-failed")
    assert report.body["ppi"] is None and "unreadable image" in report.body["note"]
    assert not stub.to("/derivatives")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
def test_a_failure_report_that_cannot_be_delivered_is_named(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path]
) -> None:
    stub.answer("/derivative-failed", 404, times=None)
    ctx = context(stub, tmp_path / "work", job="derivatives")
    with_image(ctx.workdir, sheets["corrupt"], f"{GUID}.tif")
    with pytest.raises(ModuleFailed, match="not delivered") as caught:
        derivatives.run(ctx)
    assert caught.value.retryable is False


def test_bad_settings_fail_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASSCO_THUMBNAIL_PX", "tiny")
    with pytest.raises(ModuleFailed, match="DASSCO_THUMBNAIL_PX"):
        derivatives.specs(__import__("os").environ)
