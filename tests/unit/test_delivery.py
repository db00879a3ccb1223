"""Reading and checking delivery folders, and settle tracking (no database)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from dasscod import delivery as delivery_module
from dasscod.delivery import (
    REASON_FILE,
    DeliveryRejected,
    SettleTracker,
    crc32_of,
    file_entry,
    read_delivery,
    snapshot,
)

PIPELINES = {"PIPEHERB0001", "PIPEPIOF0001"}


def metadata(guid: str = "asset-1", **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "asset_guid": guid,
        "institution": "NHMD",
        "collection": "Vascular plants",
        "pipeline_name": "PIPEHERB0001",
        "workstation_name": "WORKHERB0001",
        "date_asset_taken": "2024-10-05T10:00:00+02:00",
        "parent_guid": "",
    }
    data.update(changes)
    return data


def make_folder(
    root: Path,
    meta: dict[str, Any] | str | None = None,
    images: dict[str, bytes] | None = None,
    name: str = "delivery",
) -> Path:
    folder = root / name
    folder.mkdir()
    if meta is None:
        meta = metadata()
    text = meta if isinstance(meta, str) else json.dumps(meta)
    (folder / "asset.json").write_text(text, encoding="utf-8")
    for file_name, data in (images if images is not None else {"asset-1.tif": b"abc"}).items():
        (folder / file_name).write_bytes(data)
    return folder


def rejection(folder: Path) -> str:
    with pytest.raises(DeliveryRejected) as caught:
        read_delivery(folder, PIPELINES)
    return caught.value.reason


# --------------------------------------------------------------------------- files


def test_crc_matches_zlib_when_read_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = bytes(range(256)) * 3
    path = tmp_path / "x.tif"
    path.write_bytes(data)
    monkeypatch.setattr(delivery_module, "CRC_CHUNK", 7)  # many chunks from tiny data
    assert crc32_of(path) == zlib.crc32(data)


def test_file_entry_has_size_in_mb_crc_and_lower_case_type(tmp_path: Path):
    path = tmp_path / "Sheet.TIF"
    path.write_bytes(b"x" * 2500)
    entry = file_entry(path)
    assert entry.name == "Sheet.TIF"
    assert entry.type == "tif"
    assert entry.file_size == pytest.approx(0.0025)
    assert entry.check_sum == zlib.crc32(b"x" * 2500)
    assert entry.deleted is False


def test_valid_delivery(tmp_path: Path):
    folder = make_folder(tmp_path, images={"asset-1.tif": b"a" * 1500, "asset-1.jpeg": b"b" * 1000})
    (folder / ".ready").touch()
    (folder / ".partial.tmp").write_bytes(b"ignored")
    (folder / REASON_FILE).write_text("left over from an earlier quarantine")
    found = read_delivery(folder, PIPELINES)
    assert found.guid == "asset-1"
    assert found.metadata.parent_guid is None  # "" from the Ingestion Client means no parent
    assert found.metadata_file == folder / "asset.json"
    assert [e.name for e in found.file_entries] == ["asset-1.jpeg", "asset-1.tif"]
    assert [e.type for e in found.file_entries] == ["jpeg", "tif"]
    assert [e.check_sum for e in found.file_entries] == [
        zlib.crc32(b"b" * 1000),
        zlib.crc32(b"a" * 1500),
    ]
    assert found.asset_size == pytest.approx(0.0025)
    assert [p for p, _ in found.files] == [folder / "asset-1.jpeg", folder / "asset-1.tif"]


def test_manifest_is_checked_and_not_stored(tmp_path: Path):
    folder = make_folder(tmp_path, metadata(files=["asset-1.tif"]), images={"asset-1.tif": b"abc"})
    found = read_delivery(folder, PIPELINES)
    assert "files" not in found.metadata.model_dump()


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("meta", "images", "expected"),
    [
        ('{"asset_guid": "a", ', None, "asset.json is not valid JSON"),
        ("[1, 2]", None, "must hold a JSON object, not list"),
        (
            {k: v for k, v in metadata().items() if k != "asset_guid"},
            None,
            "asset_guid: Field required",
        ),
        (metadata(institution=""), None, "institution: String should have at least 1 character"),
        (metadata(asset_guid="no spaces allowed"), None, "asset_guid: String should match"),
        (metadata(date_asset_taken="yesterday"), None, "date_asset_taken"),
        (
            metadata(pipeline_name="PIPENOPE0001"),
            None,
            "unknown pipeline 'PIPENOPE0001' in asset.json "
            "(pipeline_name must be one of: PIPEHERB0001, PIPEPIOF0001)",
        ),
        (metadata(), {}, "no image files"),
        (metadata(), {"asset-1.tif": b""}, "asset-1.tif is empty"),
        (
            metadata(files=["asset-1.tif", "asset-1-back.tif"]),
            {"asset-1.tif": b"abc"},
            "files listed in asset.json are missing: asset-1-back.tif",
        ),
        (
            metadata(files=["asset-1.tif"]),
            {"asset-1.tif": b"abc", "stray.tif": b"x"},
            "files not listed in asset.json (files): stray.tif",
        ),
        (metadata(files="asset-1.tif"), None, "files must be a list of file names"),
    ],
    ids=[
        "bad-json",
        "not-an-object",
        "missing-guid",
        "empty-institution",
        "bad-guid",
        "bad-date",
        "unknown-pipeline",
        "no-images",
        "empty-image",
        "listed-file-missing",
        "unlisted-file",
        "bad-manifest",
    ],
)
def test_rejections_say_what_is_wrong(
    tmp_path: Path, meta: dict[str, Any] | str, images: dict[str, bytes] | None, expected: str
):
    assert expected in rejection(make_folder(tmp_path, meta, images))


def test_bad_json_reports_line_and_column(tmp_path: Path):
    reason = rejection(make_folder(tmp_path, '{\n  "asset_guid": "a",\n}'))
    assert "line 3 column 1" in reason


def test_no_metadata_file(tmp_path: Path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.tif").write_bytes(b"x")
    assert "no metadata file" in rejection(folder)


def test_two_metadata_files(tmp_path: Path):
    folder = make_folder(tmp_path)
    (folder / "second.JSON").write_text("{}")
    assert "more than one metadata file (asset.json, second.JSON)" in rejection(folder)


def test_sub_folder(tmp_path: Path):
    folder = make_folder(tmp_path)
    (folder / "more").mkdir()
    assert "more is a sub-folder" in rejection(folder)


@pytest.mark.parametrize("name", ["back\\slash.tif", "with space.tif", "æble.tif", "-x.tif"])
def test_image_names_follow_the_rule_load_applies(tmp_path: Path, name: str):
    # These were taken before and failed on the cluster hours later.
    reason = rejection(make_folder(tmp_path, images={name: b"x"}))
    assert f"image file name {name!r}" in reason


def test_missing_folder(tmp_path: Path):
    assert "cannot be read" in rejection(tmp_path / "gone")


# --------------------------------------------------------------------------- settling


def test_snapshot_sees_names_sizes_and_dot_files(tmp_path: Path):
    folder = make_folder(tmp_path)
    first = snapshot(folder)
    assert first is not None
    assert {e[0] for e in first} == {"asset.json", "asset-1.tif"}
    (folder / ".copy.tmp").write_bytes(b"1")
    second = snapshot(folder)
    assert second is not None and second != first
    (folder / "asset-1.tif").write_bytes(b"abcd")
    assert snapshot(folder) != second
    (folder / "nested").mkdir()
    (folder / "nested" / "f").write_bytes(b"1")
    nested = snapshot(folder)
    assert nested is not None and "nested/f" in {e[0] for e in nested}
    assert snapshot(tmp_path / "gone") is None


def test_settle_tracker():
    tracker = SettleTracker(settle_s=5)
    snap_a = (("a", False, 1, 1),)
    snap_b = (("a", False, 2, 2),)
    assert not tracker.settled("d", snap_a, now=100)  # first sight
    assert not tracker.settled("d", snap_a, now=104)
    assert tracker.settled("d", snap_a, now=105)
    assert not tracker.settled("d", snap_b, now=106)  # changed: the clock starts again
    assert not tracker.settled("d", snap_b, now=110)
    assert tracker.settled("d", snap_b, now=111)
    assert not tracker.settled("d", None, now=112)  # unreadable: start again
    assert not tracker.settled("d", snap_b, now=113)
    tracker.retain([])
    assert not tracker.settled("d", snap_b, now=200)  # forgotten: first sight again


def test_settle_zero_takes_at_first_sight():
    assert SettleTracker(settle_s=0).settled("d", (), now=0)
