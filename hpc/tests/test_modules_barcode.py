"""The payload convention, and the barcode module on synthetic sheets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dassco_hpc.convention import Convention, ConventionError
from dassco_hpc.errors import ModuleFailed
from dassco_hpc.modules import barcode
from dassco_hpc.results import normalise
from listener_stub import StubListener
from module_fixtures import context, with_image


def test_convention_classifies_each_kind_of_payload() -> None:
    c = Convention()
    assert c.classify(["NHMD-1234"]).result == {
        "barcodes": ["NHMD-1234"],
        "asset_subject": "specimen",
        "MSO": False,
        "MOS": False,
        "label": False,
        "disposable": None,
    }
    two = c.classify(["NHMD-1234", "NHMD-5678", "NHMD-1234"]).result
    assert two["barcodes"] == ["NHMD-1234", "NHMD-5678"] and two["MSO"] is True
    target = c.classify(["DEVICE-TARGET:CT-1"])
    assert target.result["asset_subject"] == "device target" and target.targets == ["CT-1"]
    label = c.classify(["MOS:D42:label"]).result
    assert (label["asset_subject"], label["label"], label["MOS"], label["disposable"]) == (
        "label",
        True,
        True,
        "D42",
    )
    odd = c.classify(["https://example.org/ruler", "NHMD-1234"])
    assert odd.unknown == ["https://example.org/ruler"] and odd.result["barcodes"] == ["NHMD-1234"]


@pytest.mark.parametrize(
    "payloads", [["MOS:D1:label", "MOS:D2:label"], ["MOS:D1:label", "MOS:D1:specimen"]]
)
def test_contradictory_mos_codes_are_refused(payloads: list[str]) -> None:
    with pytest.raises(ConventionError):
        Convention().classify(payloads)


def test_patterns_come_from_the_environment() -> None:
    c = Convention.from_env({"DASSCO_BARCODE_PATTERN": r"^C\d{8}$"})
    assert c.classify(["C10012345", "NHMD-1234"]).result["barcodes"] == ["C10012345"]
    with pytest.raises(ConventionError, match="disposable"):
        Convention.from_env({"DASSCO_MOS_PATTERN": r"^MOS:(?P<role>.*)$"})
    with pytest.raises(ConventionError, match="not a regular expression"):
        Convention.from_env({"DASSCO_TARGET_PATTERN": "("})


def _read(
    stub: StubListener, tmp_path: Path, image: Path, name: str = "asset-1.tif"
) -> dict[str, Any]:
    ctx = context(stub, tmp_path / "work")
    with_image(ctx.workdir, image, name)
    out = barcode.run(ctx)
    assert normalise(out)["barcode"] == out["barcode"]  # the listener's contract
    return dict(out["barcode"])


def test_a_specimen_sheet(stub: StubListener, tmp_path: Path, sheets: dict[str, Path]) -> None:
    got = _read(stub, tmp_path, sheets["specimen"])
    assert got["barcodes"] == ["NHMD-100007"]
    assert (got["asset_subject"], got["MSO"], got["MOS"], got["disposable"]) == (
        "specimen",
        False,
        False,
        None,
    )


def test_two_specimens_on_one_sheet_are_mso(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path]
) -> None:
    got = _read(stub, tmp_path, sheets["mso"])
    assert got["barcodes"] == ["NHMD-100007", "NHMD-600007"] and got["MSO"] is True


def test_the_device_target_is_recognised(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path]
) -> None:
    got = _read(stub, tmp_path, sheets["target"])
    assert got["asset_subject"] == "device target" and got["barcodes"] == []


def test_the_mos_pair_shares_its_disposable_id(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path]
) -> None:
    specimen = _read(stub, tmp_path / "s", sheets["mos_specimen"])
    label = _read(stub, tmp_path / "l", sheets["mos_label"])
    assert specimen["MOS"] is label["MOS"] is True
    assert specimen["disposable"] == label["disposable"] == "D100007"
    assert (specimen["asset_subject"], specimen["label"]) == ("specimen", False)
    assert (label["asset_subject"], label["label"], label["barcodes"]) == ("label", True, [])
    assert specimen["barcodes"] == ["NHMD-100007"]


def test_no_barcode_is_an_empty_specimen_result_unless_required(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    got = _read(stub, tmp_path / "a", sheets["no_barcode"])
    assert got["barcodes"] == [] and got["asset_subject"] == "specimen"
    monkeypatch.setenv("DASSCO_BARCODE_REQUIRED", "1")
    with pytest.raises(ModuleFailed, match="no barcode") as caught:
        _read(stub, tmp_path / "b", sheets["no_barcode"])
    assert caught.value.retryable is False


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
@pytest.mark.parametrize("bad", ["corrupt", "not_an_image"])
def test_an_unreadable_image_fails_for_good(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path], bad: str
) -> None:
    with pytest.raises(ModuleFailed, match="unreadable image") as caught:
        _read(stub, tmp_path, sheets[bad])
    assert caught.value.retryable is False


def test_images_are_found_through_the_links_when_not_in_the_work_folder(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path]
) -> None:
    stub.gets["/assets/asset-1/links"] = {
        "asset_guid": "asset-1",
        "files": [{"name": "x.tif", "local_path": str(sheets["specimen"])}],
    }
    out = barcode.run(context(stub, tmp_path / "empty"))
    assert out["barcode"]["barcodes"] == ["NHMD-100007"]


def test_no_image_anywhere_fails_for_good(stub: StubListener, tmp_path: Path) -> None:
    stub.gets["/assets/asset-1/links"] = {"asset_guid": "asset-1", "files": []}
    with pytest.raises(ModuleFailed, match="no image") as caught:
        barcode.run(context(stub, tmp_path / "empty"))
    assert caught.value.retryable is False


@pytest.mark.parametrize("kind", ["specimen", "target", "mos_label"])
def test_codes_are_read_through_sensor_noise(stub: StubListener, tmp_path: Path, kind: str) -> None:
    from dassco_hpc import synthetic

    image = tmp_path / "noisy.tif"
    drawn = synthetic.write(image, kind, (1200, 1800), seed=3, noise=12)
    got = _read(stub, tmp_path, image)
    expected = Convention().classify(drawn.payloads).result
    assert got == expected


def test_the_synthetic_command_line_writes_tiffs(tmp_path: Path) -> None:
    from dassco_hpc import synthetic

    assert synthetic.main([str(tmp_path), "--size", "600x900", "--kind", "target"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["target-001.tif"]


def test_a_missing_package_fails_for_good_naming_the_extra(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    real = importlib.import_module

    def without_zxing(name: str, package: str | None = None) -> object:
        if name == "zxingcpp":
            raise ModuleNotFoundError("No module named 'zxingcpp'", name=name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", without_zxing)
    with pytest.raises(ModuleFailed, match=r"zxing-cpp .*dassco-hpc\[modules\]") as caught:
        _read(stub, tmp_path, sheets["specimen"])
    assert caught.value.retryable is False
