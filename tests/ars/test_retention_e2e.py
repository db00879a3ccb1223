"""Retention end to end: twenty assets go through HERB0001 and into ARS/ERDA (the simulator),
and once each is DONE and archived its files are removed, so the disk is back where it was
before they came (the store, MongoDB, is elsewhere)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from pymongo import AsyncMongoClient

from dasscod.devstack.ars import ArsSimulator
from dasscod.devstack.stack import deliver
from dasscod.wiring import build_daemon
from tests.ars.conftest import eventually
from tests.ars.test_sync_daemon import settings_with_ars

pytestmark = pytest.mark.e2e

ASSETS = 20
#: Created by the first job and kept for all: not per asset.
STANDING = {"cluster/", "cluster/jobs/", "cluster/work/", "cluster/jobs/.warm-launcher.log"}


def usage(root: Path) -> dict[str, int]:
    """Every file under `root` (relative path -> bytes); folders count as entries of 0."""
    found: dict[str, int] = {}
    for top, folders, files in os.walk(root):
        here = Path(top)
        for name in folders:
            found[f"{(here / name).relative_to(root)}/"] = 0
        for name in files:
            found[str((here / name).relative_to(root))] = (here / name).lstat().st_size
    return found


async def test_twenty_assets_leave_the_disk_as_they_found_it(
    sim: ArsSimulator, tmp_path: Path, mongo_uri: str
) -> None:
    settings = settings_with_ars(sim, tmp_path, mongo_uri)
    settings.timing = settings.timing.model_copy(update={"housekeeping_s": 0.5})
    root = tmp_path / "stack"
    guids = [f"ret-{i}-{uuid.uuid4().hex[:6]}" for i in range(ASSETS)]
    daemon = build_daemon(settings)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    track = client[settings.mongo.database]["track"]
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            with anyio.fail_after(30):
                await daemon.ready.wait()
            before = await anyio.to_thread.run_sync(usage, root)
            for guid in guids:
                deliver(root / "intake", guid)

            async def all_cleaned() -> list[dict[str, Any]] | None:
                docs = await track.find({"_id": {"$in": guids}}).to_list()
                done = len(docs) == ASSETS and all(
                    d["jobs_status"] == "DONE" and d["erda_sync"] == "YES"
                    and d["temporary_files_local"] == "NO" for d in docs)
                return docs if done else None

            docs = await eventually(all_cleaned, timeout_s=240, interval_s=0.5)
            after = await anyio.to_thread.run_sync(usage, root)
            daemon.stop()
    finally:
        await client.drop_database(settings.mongo.database)
        await client.close()
    assert all(any("retention: files removed" in h["cause"] for h in d["history"])
               for d in docs)
    left = {p: n for p, n in after.items() if before.get(p) != n}
    gone = sorted(set(before) - set(after))
    print(f"disk left behind after {ASSETS} assets: {sum(left.values())} bytes in "
          f"{len(left)} entries")
    assert sum(left.values()) == 0 and gone == [], (left, gone)
    # What the first job creates once and keeps: the cluster's own folders and the (empty)
    # warm launcher's log. Nothing of any asset.
    assert set(left) <= STANDING, left
    assert not [p for p in after if any(g in p for g in guids)]
