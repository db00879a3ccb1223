"""The daemon with `[ars]` configured: the sync supervisor runs beside the others, is woken by
their writes, and the load job waits until the asset's files are in ARS."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from pymongo import AsyncMongoClient

from dasscod.devstack.ars import ArsSimulator
from dasscod.devstack.ars.server import DEFAULT_CLIENT_SECRET
from dasscod.devstack.assets import add_asset
from dasscod.devstack.stack import LocalStack, deliver, stop_daemon
from dasscod.model import Flag, Track
from dasscod.settings import Settings
from dasscod.wiring import build_daemon
from tests.ars.conftest import eventually
from tests.ars.test_sync import DONE, assert_ars_metadata_is_local, wait_flags
from tests.integration.test_daemon import settings_for


def settings_with_ars(sim: ArsSimulator, tmp_path: Path, mongo_uri: str) -> Settings:
    """An in-process daemon's settings with `[ars]` pointing at the simulator. A job still
    running when the test stops the daemon gives its callbacks up after a few seconds rather
    than the runner's ten minutes, so that no process outlives the test for long."""
    base = settings_for(tmp_path, mongo_uri)
    base.clusters["local"].env["DASSCO_CALLBACK_DEADLINE_S"] = "5"
    return Settings.model_validate({**base.model_dump(), "ars": sim.settings(),
                                    "security": base.security})


async def test_the_daemon_syncs_to_ars_before_the_load_job_becomes_ready(
    sim: ArsSimulator, tmp_path: Path, mongo_uri: str
) -> None:
    settings = settings_with_ars(sim, tmp_path, mongo_uri)
    daemon = build_daemon(settings)
    assert daemon.pipelines["PIPEHERB0001"].spec("load").requires["is_in_ars"] is Flag.YES
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            await daemon.ready.wait()
        track = await add_asset(daemon.stores, tmp_path / "files", "daemon-ars-1")
        assert track.ready == []  # not before the files are in ARS
        [track] = await wait_flags(daemon.stores, [track.id], DONE)

        async def load_taken() -> Track | None:
            t = await daemon.stores.track.get(track.id)
            return t if t and any(h.job == "load" for h in t.history) else None

        track = await eventually(load_taken)  # woken by the flag change, not a sweep
        started = time.monotonic()
        daemon.stop()
    assert time.monotonic() - started < settings.timing.shutdown_s - 1
    in_erda = next(i for i, h in enumerate(track.history) if "in ERDA" in h.cause)
    first_job = next(i for i, h in enumerate(track.history) if h.job == "load")
    assert first_job > in_erda


@pytest.mark.e2e
async def test_a_daemon_killed_while_ars_creates_an_asset_asks_ars_after_the_restart(
    sim: ArsSimulator, tmp_path: Path, mongo_uri: str
) -> None:
    """SIGKILL lands after ARS created an asset and before its answer reached the daemon (the
    claim AWAIT is written, the outcome is not). The restarted daemon must find the asset in
    ARS, not create it again or open a second share, and carry every asset to the end."""
    database = f"ars_kill_{uuid.uuid4().hex[:8]}"
    secret_file = tmp_path / "ars-secret"
    secret_file.write_text(DEFAULT_CLIENT_SECRET, encoding="utf-8")
    table = sim.settings().model_dump(mode="json", exclude={"client_secret"})
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=database,
                       ars={**table, "client_secret_file": str(secret_file)})
    stack.write_config()
    guids = [f"arskill-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    sim.faults.latency_s = 1.0  # every ARS answer comes a second after ARS acted
    for g in guids:
        deliver(stack.intake, g)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    track = client[database]["track"]
    proc = stack.start_daemon()
    try:
        async def created_in_ars() -> str | None:
            return next(iter(sim.state.assets), None)

        # ARS has created the asset; its answer is still a second away when the kill lands.
        lost = await eventually(created_in_ars, timeout_s=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        claimed = {d["_id"] for d in await track.find({"is_in_ars": "AWAIT"}).to_list()}
        assert lost in claimed, "the kill should land between a create claim and its answer"
        sim.faults.latency_s = 0.0
        proc = stack.start_daemon()

        async def all_done() -> list[dict[str, Any]] | None:
            docs = await track.find({"_id": {"$in": guids}}).to_list()
            finished = len(docs) == len(guids) and all(
                d["jobs_status"] == "DONE" and d["erda_sync"] == "YES" for d in docs)
            return docs if finished else None

        docs = await eventually(all_done, timeout_s=120, interval_s=0.2)
    finally:
        status = stop_daemon(proc)
        await client.drop_database(database)
        await client.close()
    assert status == 0
    [recovered] = [d for d in docs if d["_id"] == lost]
    assert any("found in ARS" in h["cause"] for h in recovered["history"]), (
        "the restarted daemon asks ARS about the create whose answer it lost")
    assert sim.count("/createShare") == 0  # the one share came with the one create
    for d in docs:
        assert not [h for h in d["history"] if h["to"] == "ERROR"], d["history"]
        assert all(f.synced for f in sim.state.files[d["_id"]].values())


async def test_jobs_that_do_not_need_ars_run_through_an_outage(
    sim: ArsSimulator, tmp_path: Path, mongo_uri: str
) -> None:
    settings = settings_with_ars(sim, tmp_path, mongo_uri)
    daemon = build_daemon(settings)
    stores = daemon.stores
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            await daemon.ready.wait()
        track = await add_asset(stores, tmp_path / "files", f"outage-{uuid.uuid4().hex[:6]}")

        async def loaded() -> Track | None:
            t = await stores.track.get(track.id)
            return t if t and t.job("load").status == "DONE" else None

        await eventually(loaded, timeout_s=30)
        sim.faults.down_for(3600)  # ARS goes down once the files are on the cluster

        async def finished() -> Track | None:
            t = await stores.track.get(track.id)
            return t if t and t.jobs_status == "DONE" else None

        during = await eventually(finished, timeout_s=60)
        assert during.update_metadata is Flag.YES  # the jobs' results wait for ARS ...
        assert any(r.outcome == "error" for r in sim.requests)  # ... which really is down
        sim.faults.down_until = 0.0
        [after] = await wait_flags(stores, [track.id], {"update_metadata": Flag.NO},
                                   timeout_s=30)
        await assert_ars_metadata_is_local(sim, stores, track.id)  # pushed once ARS is back
        daemon.stop()
    assert after.jobs_status == "DONE"
