"""Delivery folders built to break the reader: metadata a store or another reader would take
otherwise than meant, names that cannot be stored, files that change while they are read,
folders too large to list. Each must end in a `DeliveryRejected` whose reason says what is
wrong (and can be written anywhere), never in another exception or a read of the whole thing."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from dasscod import delivery as delivery_module
from dasscod.delivery import (
    MAX_ENTRIES,
    MAX_FILES,
    MAX_METADATA_BYTES,
    DeliveryChanged,
    DeliveryRejected,
    read_delivery,
    snapshot,
    verify_unchanged,
)
from tests.unit.test_delivery import PIPELINES, make_folder, metadata, rejection

GB = 1_000_000_000


def raw_folder(root: Path, text: str | bytes, images: dict[str, bytes] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    folder = make_folder(root, "{}", images)
    data = text if isinstance(text, bytes) else text.encode("utf-8")
    (folder / "asset.json").write_bytes(data)
    return folder


def with_fields(**extra: Any) -> str:
    return json.dumps({**metadata(), **extra}, ensure_ascii=False)


def writable(reason: str) -> str:
    reason.encode("utf-8")  # a REASON.txt, a log line, a JSON answer: all need valid text
    return reason


# --------------------------------------------------------------------------- metadata


def test_a_huge_sparse_metadata_file_is_refused_by_its_size_unread(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    folder = make_folder(tmp_path)
    with (folder / "asset.json").open("r+b") as stream:
        stream.truncate(GB)  # sparse: costs nothing on disk
    def never(path: Path) -> None:
        pytest.fail(f"{path} was opened")

    monkeypatch.setattr(delivery_module, "open_regular", never)
    assert f"is {GB} bytes, too large for a metadata file" in rejection(folder)


def test_metadata_is_at_most_a_megabyte(tmp_path: Path):
    padded = with_fields() + " " * MAX_METADATA_BYTES  # valid JSON, but no metadata is this big
    assert "too large for a metadata file" in rejection(raw_folder(tmp_path, padded))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"tags": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ('{"tags": {"a": ' + '{"b": ' * 30 + "1" + "}" * 30 + "}}", "nested deeper than 20"),
        (with_fields()[:-1] + ', "pipeline_name": "PIPEPIOF0001"}',
         "'pipeline_name' is given twice"),
        (with_fields()[:-1] + ', "note": NaN}', "NaN is not a number"),
        (with_fields()[:-1] + ', "note": -Infinity}', "-Infinity is not a number"),
        (with_fields()[:-1] + ', "note": 1e400}', "the number 1e400 is too large"),
        (with_fields()[:-1] + ', "note": 18446744073709551616}', "integer outside 64 bits"),
        (with_fields()[:-1] + ', "note": ' + "9" * 5000 + "}", "not acceptable JSON"),
        (with_fields(**{"$where": "sleep(1000)"}), "starts with '$'"),
        (with_fields(tags={"$set": {"status": "x"}}), "starts with '$'"),
        (with_fields(note={"deep": {"$gt": ""}}), "starts with '$'"),
        (with_fields(**{"job_list.0.status": "DONE"}), "holds '.'"),
        (with_fields(**{"a\u0000b": 1}), "NUL"),
        (with_fields(**{"": 1}), "an empty field name"),
        (with_fields(_id="someone-else"), "sets _id: the daemon writes those fields"),
        (with_fields(metadata_version=99), "sets metadata_version"),
        (with_fields(digitiser="a\u0000b"), "NUL character at metadata.digitiser"),
        (with_fields(tags={"ocr": ["ok", "x\u0000"]}), "NUL character at metadata.tags.ocr[1]"),
        (with_fields(workstation_name="W" * 201), "workstation_name longer than 200"),
        (with_fields()[:-1] + ', "note": "\\udc80"}', "cannot be stored"),
        (with_fields()[:-1] + ', "tags": {"x": "\\ud800"}}', "cannot be stored"),
    ],
    ids=["deep-nesting", "nesting-over-bound", "duplicate-key", "nan", "infinity", "overflow",
         "beyond-64-bits", "5000-digits", "dollar-key", "dollar-in-tags", "dollar-nested",
         "dotted-key", "nul-key", "empty-key", "owned-id", "owned-version", "nul-value",
         "nul-in-list", "long-name", "lone-surrogate",
         "lone-surrogate-in-tags"],
)
def test_metadata_a_store_or_reader_could_misread_is_refused(tmp_path: Path, text: str,
                                                             expected: str):
    reason = writable(rejection(raw_folder(tmp_path, text)))
    assert expected in reason


def test_metadata_must_be_utf8_and_may_carry_a_bom(tmp_path: Path):
    latin1 = with_fields(digitiser="Søren").encode("latin-1")
    assert "is not UTF-8 text" in rejection(raw_folder(tmp_path / "a", latin1))
    utf16 = with_fields().encode("utf-16")
    assert "is not UTF-8 text" in rejection(raw_folder(tmp_path / "b", utf16))
    bom = b"\xef\xbb\xbf" + with_fields(digitiser="Søren").encode("utf-8")
    found = read_delivery(raw_folder(tmp_path / "c", bom), PIPELINES)
    assert found.metadata.digitiser == "Søren"


@pytest.mark.parametrize("guid", ["a/b", "..", "a\u0000b", "a b", "\uff41bc", "x" * 3000,
                                  "abc\n", "-abc"])
def test_a_guid_that_could_name_a_path_or_pass_for_another_is_refused(tmp_path: Path, guid: str):
    assert "asset_guid" in writable(rejection(raw_folder(tmp_path, with_fields(asset_guid=guid))))


@pytest.mark.parametrize("parent", ["../other", "a/b", "x y", "x" * 3000, "asset-1"])
def test_a_parent_guid_must_be_another_guid(tmp_path: Path, parent: str):
    reason = writable(rejection(raw_folder(tmp_path, with_fields(parent_guid=parent))))
    assert "parent_guid" in reason and "is not the guid of another asset" in reason


def test_plain_metadata_is_still_taken(tmp_path: Path):
    text = with_fields(parent_guid="parent-0", tags={"metadataTemplate": "x", "n": 2**63 - 1},
                       note="ünïcødé ✓")
    found = read_delivery(raw_folder(tmp_path, text), PIPELINES)
    assert found.metadata.parent_guid == "parent-0"


# --------------------------------------------------------------------------- files


def test_a_name_that_is_not_utf8_is_refused_with_a_reason_that_can_be_written(tmp_path: Path):
    folder = make_folder(tmp_path)
    os.close(os.open(os.fsencode(folder) + b"/sheet-\xff.tif", os.O_CREAT | os.O_WRONLY))
    reason = writable(rejection(folder))
    assert "sheet-\\udcff.tif" in reason


def test_a_metadata_file_whose_name_is_not_utf8_gives_a_writable_reason(tmp_path: Path):
    folder = make_folder(tmp_path, metadata(pipeline_name="PIPENOPE"))
    (folder / "asset.json").rename(os.fsdecode(os.fsencode(folder) + b"/\xe6ble.json"))
    assert "unknown pipeline" in writable(rejection(folder))


def test_names_that_differ_only_in_case_are_refused(tmp_path: Path):
    folder = make_folder(tmp_path, images={"Sheet.tif": b"a", "sheet.TIF": b"b"})
    assert "differ only in case" in rejection(folder)


def test_a_hard_link_is_refused(tmp_path: Path):
    outside = tmp_path / "elsewhere.tif"
    outside.write_bytes(b"the producer keeps this name and can change it later")
    folder = make_folder(tmp_path)
    os.link(outside, folder / "linked.tif")
    assert "linked.tif has 2 names (hard links)" in rejection(folder)


@pytest.mark.parametrize("kind", ["folder", "link", "fifo"])
def test_a_hidden_entry_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str):
    folder = make_folder(tmp_path)
    hidden = folder / ".hidden"
    if kind == "folder":
        hidden.mkdir()
    elif kind == "link":
        hidden.symlink_to("/etc/passwd")
    else:
        os.mkfifo(hidden)
    assert ".hidden is not a regular file" in rejection(folder)


def test_hidden_regular_files_are_ignored(tmp_path: Path):
    folder = make_folder(tmp_path)
    (folder / ".DS_Store").write_bytes(b"finder")
    assert [e.name for e in read_delivery(folder, PIPELINES).file_entries] == ["asset-1.tif"]


def test_too_many_files(tmp_path: Path):
    images = {f"asset-1-{n}.tif": b"x" for n in range(MAX_FILES + 1)}
    assert f"{MAX_FILES + 1} image files: a delivery holds at most {MAX_FILES}" in rejection(
        make_folder(tmp_path, images=images))


def test_listing_stops_at_the_entry_bound(tmp_path: Path):
    folder = make_folder(tmp_path)
    for n in range(MAX_ENTRIES):
        (folder / f".junk-{n}").touch()
    assert f"more than {MAX_ENTRIES} entries" in rejection(folder)
    with pytest.raises(DeliveryRejected, match=f"more than {MAX_ENTRIES} entries"):
        snapshot(folder)


def test_snapshot_counts_the_entries_of_nested_folders(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(delivery_module, "MAX_ENTRIES", 10)
    deep = tmp_path / "d"
    for _ in range(11):
        deep = deep / "n"
    deep.mkdir(parents=True)
    with pytest.raises(DeliveryRejected, match="more than 10 entries"):
        snapshot(tmp_path / "d")


def test_an_unreadable_sub_folder_is_a_problem_not_a_wait(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    # The daemon runs as root in CI, where no permission bit stops it: the refusal is injected.
    folder = make_folder(tmp_path)
    (folder / "locked").mkdir()
    real = os.scandir

    def scandir(path: Any) -> Any:
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DeliveryRejected, match="locked/ cannot be read: Permission denied"):
        snapshot(folder)


def test_a_huge_sparse_image_is_refused_by_size_before_it_is_read(tmp_path: Path):
    folder = make_folder(tmp_path)
    with (folder / "big.tif").open("wb") as stream:
        stream.truncate(2 * GB)
    with pytest.raises(DeliveryRejected) as caught:
        read_delivery(folder, PIPELINES, max_bytes=GB,
                      progress=lambda: pytest.fail("a byte was checksummed"))
    assert "more than intake takes in one delivery" in caught.value.reason
    assert "intake.max_delivery_mb" in caught.value.reason


def test_a_file_growing_while_it_is_read_is_a_change_not_a_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(delivery_module, "CRC_CHUNK", 4)
    folder = make_folder(tmp_path, images={"asset-1.tif": b"0123456789"})

    def writer() -> None:
        with (folder / "asset-1.tif").open("ab") as stream:
            stream.write(b"more")

    with pytest.raises(DeliveryChanged, match=r"asset-1\.tif changed while it was read"):
        read_delivery(folder, PIPELINES, progress=writer)


def test_a_file_replaced_while_it_is_read_is_a_change(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(delivery_module, "CRC_CHUNK", 4)
    folder = make_folder(tmp_path, images={"asset-1.tif": b"0123456789"})
    swapped: list[bool] = []

    def swap() -> None:
        if not swapped:
            (folder / "new.tmp").write_bytes(b"9876543210")
            (folder / "new.tmp").replace(folder / "asset-1.tif")
            swapped.append(True)

    found = None
    with pytest.raises(DeliveryChanged):
        found = read_delivery(folder, PIPELINES, progress=swap)
    assert found is None


@pytest.mark.parametrize("change", ["append", "replace", "add", "remove", "touch"])
def test_verify_unchanged_finds_any_change_since_the_read(tmp_path: Path, change: str):
    folder = make_folder(tmp_path, images={"asset-1.tif": b"abc", "asset-2.tif": b"def"})
    found = read_delivery(folder, PIPELINES)
    assert [e.check_sum for e in found.file_entries] == [zlib.crc32(b"abc"), zlib.crc32(b"def")]
    verify_unchanged(found, folder)  # nothing changed yet
    image = folder / "asset-1.tif"
    if change == "append":
        with image.open("ab") as stream:
            stream.write(b"!")
    elif change == "replace":
        (folder / "x.tmp").write_bytes(b"xyz")
        (folder / "x.tmp").replace(image)
    elif change == "add":
        (folder / "asset-3.tif").write_bytes(b"late")
    elif change == "remove":
        image.unlink()
    else:
        os.utime(image, ns=(1, 1))
    with pytest.raises(DeliveryChanged):
        verify_unchanged(found, folder)
