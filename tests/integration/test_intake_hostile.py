"""Intake against deliveries built to harm the host: links, FIFOs, names too long.

Nothing a delivery contains may make the daemon write outside its folders, follow a link out
of the intake folder, or block its loop.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest
import structlog

from dasscod.delivery import REASON_FILE
from dasscod.quarantine import NAME_MAX
from dasscod.store import Stores
from tests.integration.test_intake import Intake, deliver, meta

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
