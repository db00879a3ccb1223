"""Intake against deliveries built to harm the host: links, FIFOs, names too long.

Nothing a delivery contains may make the daemon write outside its folders, follow a link out
of the intake folder, or block its loop.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
import structlog

from dasscod import delivery as delivery_module
from dasscod.delivery import MAX_ENTRIES, REASON_FILE, verify_unchanged
from dasscod.quarantine import NAME_MAX
from dasscod.store import AssetExists, Stores
from dasscod.watchdog import Progress, supervised_as
from tests.integration.test_intake import PIPELINES, Intake, deliver, meta

#: A scan that blocks (a FIFO opened for writing) fails the test instead of hanging it.
SCAN_LIMIT_S = 20


@pytest.fixture
def intake(tmp_path: Path, stores: Stores) -> Intake:
    return Intake(tmp_path, stores)


async def scan(intake: Intake) -> int:
    with anyio.fail_after(SCAN_LIMIT_S):
        return await intake.supervisor.scan_once()


async def test_a_reason_link_is_not_written_through(intake: Intake, tmp_path: Path):
    victim = tmp_path / "victim.conf"
    victim.write_text("the daemon user's file\n")
    folder = deliver(intake.folder, "bad", '{"not": "valid metadata"')
    (folder / REASON_FILE).symlink_to(victim)
    absent = tmp_path / "created-through-a-link"
    other = deliver(intake.folder, "bad2", '{"broken"')
    (other / REASON_FILE).symlink_to(absent)

    assert await scan(intake) == 0

    assert victim.read_text() == "the daemon user's file\n"
    assert not absent.exists()
    moved = intake.quarantined()
    assert len(moved) == 2
    for place in moved:
        reason = place / REASON_FILE
        assert not reason.is_symlink() and reason.is_file()
        assert "REASON.txt is not a regular file" in reason.read_text()
    assert list(intake.folder.iterdir()) == []


async def test_a_valid_delivery_with_a_reason_link_is_refused(intake: Intake, tmp_path: Path):
    victim = tmp_path / "victim.conf"
    victim.write_text("keep\n")
    folder = deliver(intake.folder, "g1", meta("g1"))
    (folder / REASON_FILE).symlink_to(victim)

    assert await scan(intake) == 0

    assert victim.read_text() == "keep\n"
    assert await intake.counts() == (0, 0)
    assert "REASON.txt is not a regular file" in intake.reason()


async def test_a_reason_fifo_does_not_block_the_loop(intake: Intake):
    folder = deliver(intake.folder, "bad", "{broken")
    os.mkfifo(folder / REASON_FILE)
    deliver(intake.folder, "g2", meta("g2"))

    assert await scan(intake) == 1  # the good delivery behind it is taken

    (moved,) = intake.quarantined()
    assert (moved / REASON_FILE).is_file()
    assert "REASON.txt is not a regular file" in (moved / REASON_FILE).read_text()


@pytest.mark.parametrize("kind", ["fifo-image", "fifo-json", "link-image", "link-json"])
async def test_files_that_are_not_regular_are_refused_without_blocking(
    intake: Intake, tmp_path: Path, kind: str
):
    outside = tmp_path / "outside.tif"
    outside.write_bytes(b"II*\0outside")
    folder = deliver(intake.folder, "g3", meta("g3"), {"g3.tif": b"II*\0tif"})
    target = folder / ("g3-back.tif" if kind.endswith("image") else "g3.json")
    target.unlink(missing_ok=True)
    if kind.startswith("fifo"):
        os.mkfifo(target)
    else:
        target.symlink_to(outside if kind.endswith("image") else tmp_path / "meta.json")

    assert await scan(intake) == 0

    assert await intake.counts() == (0, 0)
    assert "is not a regular file" in intake.reason()


async def test_names_too_long_are_shortened_so_they_can_always_be_quarantined(intake: Intake):
    prefix = "x" * 245  # + "-<UTC time>" overflowed NAME_MAX
    for name in (prefix + "a", prefix + "b", "ø" * 127):  # the last: 254 bytes in UTF-8
        folder = intake.folder / name
        folder.mkdir()
        (folder / "m.json").write_text("{broken")
        (folder / ".ready").touch()

    assert await scan(intake) == 0

    moved = intake.quarantined()
    assert len(moved) == 3
    assert list(intake.folder.iterdir()) == []
    for place in moved:
        assert len(os.fsencode(place.name)) <= NAME_MAX
        assert (place / REASON_FILE).is_file()
    assert len({p.name for p in moved}) == 3  # two long names with one prefix stay apart
    assert any(p.name.startswith("ø" * 50) for p in moved)  # cut on a character boundary


async def test_a_symlinked_delivery_folder_is_quarantined_once_and_not_read(
    intake: Intake, tmp_path: Path
):
    elsewhere = deliver(tmp_path / "elsewhere", "g4", meta("g4"))
    before = sorted(p.name for p in elsewhere.iterdir())
    (intake.folder / "g4").symlink_to(elsewhere)

    with structlog.testing.capture_logs() as logs:
        assert await scan(intake) == 0
        assert await scan(intake) == 0

    assert await intake.counts() == (0, 0)
    assert sorted(p.name for p in elsewhere.iterdir()) == before  # nothing written there
    (holder,) = intake.quarantined()
    assert (holder / "g4").is_symlink()
    assert "symbolic link" in (holder / REASON_FILE).read_text()
    assert list(intake.folder.iterdir()) == []
    quarantined = [e for e in logs if e["event"] == "delivery quarantined"]
    assert len(quarantined) == 1
    assert "symbolic link" in quarantined[0]["reason"]


async def test_a_reason_folder_sends_the_delivery_into_a_fresh_folder(intake: Intake):
    folder = deliver(intake.folder, "bad", "{broken")
    (folder / REASON_FILE).mkdir()
    (folder / REASON_FILE / "inside").write_text("x")

    assert await scan(intake) == 0

    (holder,) = intake.quarantined()
    assert "REASON.txt is not a regular file" in (holder / REASON_FILE).read_text()
    assert (holder / "bad" / REASON_FILE / "inside").read_text() == "x"


# --------------------------------------------------------------------------- more attacks


def quarantine_lines(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "delivery quarantined"]


def loud(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """Error lines and tracebacks: a hostile delivery is a warning, never a crash."""
    return [e for e in logs if e["log_level"] in ("error", "critical") or "exc_info" in e]


def make_hostile(intake: Intake, tmp_path: Path, kind: str) -> str:
    """Build one hostile delivery; return what its REASON.txt must say."""
    if kind == "not-utf8-folder":
        raw = os.fsencode(intake.folder) + b"/bad-\xff\xfe"
        Path(os.fsdecode(raw)).mkdir()
        Path(os.fsdecode(raw), "m.json").write_text(json.dumps(meta("x1", pipeline_name="NOPE")))
        Path(os.fsdecode(raw), "x1.tif").write_bytes(b"II*\0")
        Path(os.fsdecode(raw), ".ready").touch()
        return "unknown pipeline"
    if kind == "not-utf8-image":
        folder = deliver(intake.folder, "x2", meta("x2"))
        os.close(os.open(os.fsencode(folder) + b"/x2-\xe6.tif", os.O_CREAT | os.O_WRONLY))
        return "x2-\\udce6.tif"
    if kind == "dollar-keys":
        deliver(intake.folder, "x3", meta("x3", **{"$set": {"jobs_status": "DONE"}}))
        return "starts with '$'"
    if kind == "owned-fields":
        deliver(intake.folder, "x4", meta("x4", _id="victim", metadata_version=7))
        return "the daemon writes those fields itself"
    if kind == "lone-surrogate":
        deliver(intake.folder, "x5", json.dumps(meta("x5"))[:-1] + ', "note": "\\udc80"}')
        return "cannot be stored"
    if kind == "duplicate-key":
        deliver(intake.folder, "x6", json.dumps(meta("x6"))[:-1] + ', "asset_guid": "other"}')
        return "is given twice"
    if kind == "deep-json":
        deliver(intake.folder, "x7", '{"tags": ' + "[" * 50_000 + "]" * 50_000 + "}")
        return "nested too deeply"
    if kind == "huge-metadata":
        folder = deliver(intake.folder, "x8", meta("x8"))
        with (folder / "x8.json").open("r+b") as stream:
            stream.truncate(1 << 30)
        return "too large for a metadata file"
    if kind == "huge-image":
        folder = deliver(intake.folder, "x9", meta("x9"))
        with (folder / "x9-big.tif").open("wb") as stream:
            stream.truncate(3 * MAX_DELIVERY_MB * 1_000_000)
        return "more than intake takes in one delivery"
    if kind == "hard-link":
        outside = tmp_path / "outside.tif"
        outside.write_bytes(b"II*\0 the producer's own")
        folder = deliver(intake.folder, "x10", meta("x10"))
        os.link(outside, folder / "x10-linked.tif")
        return "has 2 names (hard links)"
    if kind == "case-twins":
        deliver(intake.folder, "x11", meta("x11"), {"x11.tif": b"II*\0a", "X11.TIF": b"II*\0b"})
        return "differ only in case"
    if kind == "hidden-fifo":
        folder = deliver(intake.folder, "x12", meta("x12"))
        os.mkfifo(folder / ".pipe")
        return ".pipe is not a regular file"
    if kind == "too-many-entries":
        folder = deliver(intake.folder, "x13", meta("x13"))
        for n in range(MAX_ENTRIES):
            (folder / f"x13-{n}.tif").write_bytes(b"II*\0")
        return f"more than {MAX_ENTRIES} entries"
    if kind == "parent-path":
        deliver(intake.folder, "x14", meta("x14", parent_guid="../../etc"))
        return "is not the guid of another asset"
    if kind == "fifo-in-intake":
        os.mkfifo(intake.folder / "x15.pipe")
        return "x15.pipe is not a folder (a FIFO, socket or device)"
    raise AssertionError(kind)


HOSTILE = ["not-utf8-folder", "not-utf8-image", "dollar-keys", "owned-fields", "lone-surrogate",
           "duplicate-key", "deep-json", "huge-metadata", "huge-image", "hard-link", "case-twins",
           "hidden-fifo", "too-many-entries", "parent-path", "fifo-in-intake"]
MAX_DELIVERY_MB = 1


@pytest.mark.parametrize("kind", HOSTILE)
async def test_a_hostile_delivery_is_quarantined_with_its_reason_and_one_line(
    tmp_path: Path, stores: Stores, kind: str
):
    intake = Intake(tmp_path, stores, max_delivery_mb=MAX_DELIVERY_MB)
    expected = make_hostile(intake, tmp_path, kind)
    deliver(intake.folder, "good", meta("good"))  # taken at the same time, unharmed

    with structlog.testing.capture_logs() as logs:
        assert await scan(intake) == 1

    assert await stores.track.get("good") is not None
    assert await intake.counts() == (1, 1)  # nothing of the hostile one was stored
    assert sorted(p.name for p in intake.work_area.iterdir()) == ["good"]
    assert list(intake.folder.iterdir()) == []
    (place,) = intake.quarantined()
    assert expected in (place / REASON_FILE).read_text(encoding="utf-8")
    (line,) = quarantine_lines(logs)
    assert expected in line["reason"]
    assert loud(logs) == []


async def test_a_loose_file_in_the_intake_folder_is_quarantined_once_settled(
    tmp_path: Path, stores: Stores
):
    clock = [0.0]
    intake = Intake(tmp_path, stores, settle_s=5, clock=lambda: clock[0])
    (intake.folder / "sheet.tif").write_bytes(b"II*\0 delivered without its folder")

    assert await scan(intake) == 0
    assert intake.quarantined() == []  # it may still be being copied
    clock[0] = 6
    assert await scan(intake) == 0

    (holder,) = intake.quarantined()
    assert (holder / "sheet.tif").read_bytes() == b"II*\0 delivered without its folder"
    assert "sheet.tif is a file, not a delivery folder" in (holder / REASON_FILE).read_text()
    assert list(intake.folder.iterdir()) == []


async def test_a_file_written_while_it_is_read_waits_and_is_taken_once_settled(
    tmp_path: Path, stores: Stores, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(delivery_module, "CRC_CHUNK", 4)
    clock = [0.0]
    intake = Intake(tmp_path, stores, settle_s=5, clock=lambda: clock[0])
    folder = deliver(intake.folder, "g20", meta("g20"), {"g20.tif": b"II*\0first"})
    writes = [b"-and-more"]

    def writer() -> None:
        if writes:
            with (folder / "g20.tif").open("ab") as stream:
                stream.write(writes.pop())

    def read(path: Path) -> Any:  # the CRC's progress hook writes into the file being read
        return delivery_module.read_delivery(path, PIPELINES, progress=writer)

    monkeypatch.setattr(intake.supervisor, "_read", read)

    with structlog.testing.capture_logs() as logs:
        assert await scan(intake) == 0  # .ready, but the file changed under the checksum
        assert await scan(intake) == 0  # no longer trusted: it must settle first
        clock[0] = 6
        assert await scan(intake) == 1

    assert intake.quarantined() == []
    track = await stores.track.get("g20")
    assert track is not None
    assert track.file_list[0].check_sum == zlib.crc32(b"II*\0first-and-more")
    waits = [e for e in logs if e["event"].startswith("delivery changed while it was read")]
    assert len(waits) == 1


async def test_a_file_changed_after_the_checksum_is_never_registered(
    tmp_path: Path, stores: Stores, monkeypatch: pytest.MonkeyPatch
):
    intake = Intake(tmp_path, stores)
    folder = deliver(intake.folder, "g21", meta("g21"), {"g21.tif": b"II*\0checked"})
    real = intake.supervisor._read

    def read_then_swap(path: Path) -> Any:
        found = real(path)
        # Between the checksum and the move: the producer swaps the file.
        (folder / "new.tmp").write_bytes(b"II*\0swapped")
        (folder / "new.tmp").replace(folder / "g21.tif")
        return found

    monkeypatch.setattr(intake.supervisor, "_read", read_then_swap)
    assert await scan(intake) == 0

    assert await intake.counts() == (0, 0)
    assert list(intake.work_area.iterdir()) == []
    reason = intake.reason()
    assert "g21.tif changed (was written to or replaced) while the delivery was taken" in reason
    (moved,) = intake.quarantined()
    assert (moved / "g21.tif").read_bytes() == b"II*\0swapped"


async def test_a_delivery_renamed_before_it_is_taken_is_taken_under_its_new_name(
    tmp_path: Path, stores: Stores, monkeypatch: pytest.MonkeyPatch
):
    intake = Intake(tmp_path, stores)
    deliver(intake.folder, "g22", meta("g22"))
    real = intake.supervisor._read
    renamed: list[Path] = []

    def rename_then_read(path: Path) -> Any:
        if not renamed:
            renamed.append(path.rename(path.with_name("g22-renamed")))
        return real(path)

    monkeypatch.setattr(intake.supervisor, "_read", rename_then_read)
    with structlog.testing.capture_logs() as logs:
        assert await scan(intake) == 0  # gone from under the take: nothing to quarantine
        assert await scan(intake) == 1  # found again under its new name

    assert await stores.track.get("g22") is not None
    assert intake.quarantined() == []
    assert loud(logs) == []
    assert [e["event"] for e in logs if "vanished" in e["event"]] == [
        "delivery vanished before it was taken"]


async def test_the_same_guid_from_the_api_and_the_folder_at_once_is_registered_once(
    tmp_path: Path, stores: Stores, monkeypatch: pytest.MonkeyPatch
):
    intake = Intake(tmp_path, stores)
    deliver(intake.folder, "g23", meta("g23"))
    staged = intake.supervisor.staging_folder()
    (staged / "g23.json").write_text(json.dumps(meta("g23")))
    (staged / "g23.tif").write_bytes(b"II*\0 api copy")
    real = verify_unchanged
    api_result: list[Any] = []

    def verify_and_race(delivery: Any, folder: Path) -> None:
        # The folder delivery is moved and about to be registered: the API delivers it too.
        api_result.append(anyio.from_thread.run(_accept, intake, staged))
        real(delivery, folder)

    monkeypatch.setattr("dasscod.supervisors.intake.verify_unchanged", verify_and_race)
    assert await scan(intake) == 1

    assert isinstance(api_result[0], AssetExists)
    assert "being registered right now" in str(api_result[0])
    assert await intake.counts() == (1, 1)
    assert not staged.exists()
    assert intake.quarantined() == []


async def _accept(intake: Intake, staged: Path) -> Any:
    try:
        return await intake.supervisor.accept(staged)
    except AssetExists as exc:
        return exc


async def test_checksumming_a_large_delivery_is_the_intakes_heartbeat(
    tmp_path: Path, stores: Stores, monkeypatch: pytest.MonkeyPatch
):
    # A delivery of many chunks keeps the watchdog fed while it is read (off the loop); the
    # beats come from the CRC's chunks, so a read that hangs stops them.
    monkeypatch.setattr(delivery_module, "CRC_CHUNK", 1024)
    intake = Intake(tmp_path, stores)
    image = b"II*\0" + bytes(range(256)) * 400  # 100 chunks of 1 KiB
    deliver(intake.folder, "g24", meta("g24"), {"g24.tif": image})
    beats: list[str] = []

    class Counting(Progress):
        def beat(self, name: str, within_s: float) -> None:
            beats.append(name)
            super().beat(name, within_s)

    taken: list[int] = []

    async def supervised_scan() -> None:  # a task of its own: the context var stays in it
        supervised_as(Counting(), "intake")
        taken.append(await scan(intake))

    async with anyio.create_task_group() as group:
        group.start_soon(supervised_scan)
    assert taken == [1]

    assert len(beats) >= len(image) // 1024
    assert set(beats) == {"intake"}
    track = await stores.track.get("g24")
    assert track is not None and track.file_list[0].check_sum == zlib.crc32(image)


async def test_a_scan_looks_at_a_bounded_number_of_entries_and_the_next_goes_on(
    tmp_path: Path, stores: Stores, monkeypatch: pytest.MonkeyPatch
):
    # Thousands of waiting deliveries must not make one scan list them all (time, memory, the
    # watchdog): each scan looks at SCAN_BUDGET entries, the next one goes on from there.
    monkeypatch.setattr("dasscod.supervisors.intake.SCAN_BUDGET", 10)
    intake = Intake(tmp_path, stores)
    for n in range(7):
        deliver(intake.folder, f"b{n}", meta(f"b{n}"))  # 1 + 3 entries each

    assert await scan(intake) == 3
    assert sorted(p.name for p in intake.folder.iterdir()) == ["b3", "b4", "b5", "b6"]
    assert await scan(intake) == 3
    assert await scan(intake) == 1
    assert await scan(intake) == 0
    assert await intake.counts() == (7, 7)


async def test_deliveries_still_being_copied_do_not_starve_the_ones_behind_them(
    tmp_path: Path, stores: Stores, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr("dasscod.supervisors.intake.SCAN_BUDGET", 10)
    intake = Intake(tmp_path, stores, settle_s=3600)
    for n in range(4):  # 1 + 2 entries each: the four spend the budget
        deliver(intake.folder, f"a{n}", meta(f"a{n}"), ready=False)  # never settle here
    deliver(intake.folder, "z-ready", meta("z-ready"))

    assert await scan(intake) == 0  # a0..a3 looked at, the budget spent
    assert await scan(intake) == 1  # the next scan starts after them
    assert await stores.track.get("z-ready") is not None


async def test_a_delivery_that_cannot_be_quarantined_is_not_read_again_every_scan(
    tmp_path: Path, stores: Stores, monkeypatch: pytest.MonkeyPatch
):
    clock = [0.0]
    intake = Intake(tmp_path, stores, clock=lambda: clock[0])
    deliver(intake.folder, "bad", meta("bad", pipeline_name="NOPE"))
    intake.quarantine.rmdir()
    intake.quarantine.write_text("not a folder: nothing can be moved into it")
    real = intake.supervisor._read
    reads: list[Path] = []

    def counted(path: Path) -> Any:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(intake.supervisor, "_read", counted)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            assert await scan(intake) == 0
        assert len(reads) == 1  # a 10 GB delivery was checksummed again every poll
        clock[0] = 61
        assert await scan(intake) == 0
        assert len(reads) == 2

    assert (intake.folder / "bad").is_dir()  # left in place, nothing lost
    failures = [e for e in logs if e["event"] == "delivery could not be quarantined; left in place"]
    assert len(failures) == 1  # logged once, not every scan


async def test_folder_names_that_look_alike_or_hold_a_newline_are_taken_once(
    tmp_path: Path, stores: Stores
):
    # Folder names are free: NFC and NFD spellings of one name are two folders, a newline is
    # just a character. One guid in both is still one asset; the other is a repeated guid.
    intake = Intake(tmp_path, stores)
    image = {"sheet.tif": b"II*\0"}
    deliver(intake.folder, "s\u00e6t-\u00e9", meta("g30"), image)  # NFC
    deliver(intake.folder, "s\u00e6t-e\u0301", meta("g30"), image)  # NFD: another name, same guid
    deliver(intake.folder, "two\nlines", meta("g31"), image)

    with structlog.testing.capture_logs() as logs:
        assert await scan(intake) == 2

    assert await intake.counts() == (2, 2)
    (place,) = intake.quarantined()
    assert "asset g30 is already registered" in (place / REASON_FILE).read_text()
    assert loud(logs) == []
