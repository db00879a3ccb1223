"""Operators' actions racing the daemon's own writes, through two clients of the same
database (as with a standby daemon, or the daemon and another process): a cancel and a
finishing job, a retry and a cancel. The compare-and-set transitions decide each race once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from dasscod.cluster.configured import build_clusters
from dasscod.coordination import Throttle, Wakeups
from dasscod.holds import Holds
from dasscod.model import JobStatus
from dasscod.pipeline import Event, JobEvent
from dasscod.pipelines import load_pipelines
from dasscod.services.control import ConfiguredLimits, ControlError, ControlService
from dasscod.settings import ClusterSettings
from dasscod.store import Stores
from tests.conftest import make_track

S = JobStatus
ASSETS = 12


@pytest.fixture
async def other(mongo_uri: str, stores: Stores) -> AsyncIterator[Stores]:
    """A second client of the test's database: writes that do not take turns with `stores`."""
    s = Stores.connect(mongo_uri, stores.db.name, load_pipelines())
    try:
        yield s
    finally:
        await s.close()


def service_on(stores: Stores, tmp_path: Path) -> ControlService:
    clusters = build_clusters({"local": ClusterSettings(work_root=tmp_path / "w",
                                                        state_dir=tmp_path / "j")})
    holds = Holds()
    throttle = Throttle(assets_in_flight=5, jobs_per_cluster={"local": 2}, wakeups=Wakeups(),
                        holds=holds)
    return ControlService(stores=stores, holds=holds, throttle=throttle, clusters=clusters,
                          pipelines=load_pipelines(),
                          configured=ConfiguredLimits(5, {"local": 2}))


async def running_assets(stores: Stores, n: int) -> list[str]:
    """Assets whose first job runs (as a direct-scheduler job that is gone already, so the
    cancel's scheduler call finds nothing to stop)."""
    guids = [f"race-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    for guid in guids:
        await stores.track.insert(make_track(guid))
        await stores.track.apply(guid, [JobEvent("load", Event.CLAIM, cluster="local")],
                                 cause="test")
        await stores.track.apply(guid, [JobEvent("load", Event.SUBMITTED, attempt=1,
                                                 hpc_job_id="999999999")], cause="test")
    return guids


async def test_a_cancel_and_a_finishing_job_end_cancelled_or_done_never_both(
    stores: Stores, other: Stores, tmp_path: Path
) -> None:
    service = service_on(stores, tmp_path)
    guids = await running_assets(stores, ASSETS)
    refused: list[str] = []

    async def cancel(guid: str) -> None:
        try:
            await service.cancel(guid, by="alice", reason=None)
        except ControlError as exc:  # never: later jobs are left to cancel either way
            refused.append(f"{guid}: {exc.detail}")

    async def finish(guid: str) -> None:
        await other.track.apply(guid, [JobEvent("load", Event.FINISHED, attempt=1)],
                                cause="callback")

    async with anyio.create_task_group() as tg:
        for guid in guids:
            tg.start_soon(cancel, guid)
            tg.start_soon(finish, guid)
    assert refused == [], "later jobs were left to cancel in every asset"
    outcomes = []
    for track in await stores.track.find(guids):
        load = track.job("load")
        ends = [h.to for h in track.history if h.job == "load" and h.to in ("DONE", "CANCELLED")]
        assert ends in (["DONE"], ["CANCELLED"]), (track.id, ends)
        assert load.status.value == ends[0]
        assert track.jobs_status is S.CANCELLED
        assert {j.status for j in track.job_list[1:]} == {S.CANCELLED}
        outcomes.append(load.status)
    assert set(outcomes) <= {S.DONE, S.CANCELLED}


async def test_a_retry_racing_a_cancel_is_decided_once(
    stores: Stores, other: Stores, tmp_path: Path
) -> None:
    """Both operators act at once (two daemons, or two requests): the asset ends either
    cancelled, or retried (and then cancelled); the refused one says why."""
    first, second = service_on(stores, tmp_path), service_on(other, tmp_path)
    guids = [f"rr-{i}-{uuid.uuid4().hex[:6]}" for i in range(ASSETS)]
    for guid in guids:
        track = make_track(guid)
        track.job_list[0].status, track.job_list[0].attempt = S.ERROR, 3
        await stores.track.insert(track)
    answers: dict[str, list[str]] = {g: [] for g in guids}

    async def act(guid: str, what: str) -> None:
        try:
            if what == "retry":
                await first.retry(guid, "load", by="alice", reason=None)
            else:
                await second.cancel(guid, by="bob", reason=None)
            answers[guid].append(what)
        except ControlError as exc:
            answers[guid].append(f"refused {what}: {exc.status}")

    async with anyio.create_task_group() as tg:
        for guid in guids:
            tg.start_soon(act, guid, "retry")
            tg.start_soon(act, guid, "cancel")
    for track in await stores.track.find(guids):
        done = answers[track.id]
        assert "cancel" in done, "a cancel of an asset in ERROR always succeeds"
        assert track.jobs_status is S.CANCELLED
        # Retried first: the retried job was cancelled too; cancelled first: it stays as it
        # failed, and the retry was refused.
        expected = S.CANCELLED if "retry" in done else S.ERROR
        assert track.job("load").status is expected, done
        retried = [h for h in track.history if h.to == "WAITING" and h.by == "alice"]
        assert len(retried) == int("retry" in done), (done, track.history)
        if "retry" not in done:
            assert done == ["cancel", "refused retry: 409"] or done == [
                "refused retry: 409", "cancel"]
