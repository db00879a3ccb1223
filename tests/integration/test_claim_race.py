"""Guarded transitions under concurrency: dispatchers racing for the same job.

Each racer does what `Dispatcher.dispatch_once` does: find the asset through the `ready`
query, then apply CLAIM with the document it read as `known`. Only the compare-and-set on
`version` decides who wins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from dasscod.model import Flag, JobStatus, Track
from dasscod.pipeline import Event, JobEvent
from dasscod.pipelines import load_pipelines
from dasscod.store import Applied, Stores
from tests.conftest import make_track

S = JobStatus
GUID = "asset-race"
RACERS = 8


class Barrier:
    """Released once `parties` tasks have arrived: every racer has read before any writes."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.released = anyio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived == self.parties:
            self.released.set()
        await self.released.wait()


@pytest.fixture
async def second_client(mongo_uri: str, stores: Stores) -> AsyncIterator[Stores]:
    """Another daemon's connection to the same database."""
    other = Stores.connect(mongo_uri, stores.db.name, load_pipelines())
    try:
        yield other
    finally:
        await other.close()


async def race(
    clients: list[Stores], *, job: str = "load", from_ready_query: bool
) -> list[tuple[str, Applied]]:
    results: list[tuple[str, Applied]] = []
    barrier = Barrier(RACERS)

    async def claim(client: Stores, cluster: str) -> None:
        known: Track | None = None
        if from_ready_query:
            found = await client.track.ready(job, 10)
            assert [t.id for t in found] == [GUID]
            known = found[0]
        await barrier.wait()  # everyone has read the same version before anyone writes
        result = await client.track.apply(
            GUID, [JobEvent(job, Event.CLAIM, cluster=cluster)], cause="dispatch", known=known
        )
        results.append((cluster, result))

    async with anyio.create_task_group() as tg:
        for i in range(RACERS):
            tg.start_soon(claim, clients[i % len(clients)], f"cluster-{i}")
    assert len(results) == RACERS
    return results


async def assert_exactly_one_claim(stores: Stores, results: list[tuple[str, Applied]]) -> None:
    winners = [cluster for cluster, r in results if r.applied]
    assert len(winners) == 1, f"{len(winners)} dispatchers claimed the same job"
    stored = await stores.track.get(GUID)
    assert stored is not None
    job = stored.job("load")
    assert job.status is S.STARTING
    assert job.attempt == 1
    assert job.cluster == winners[0]
    assert stored.version == 1  # exactly one successful write
    assert [(h.job, h.from_, h.to, h.attempt) for h in stored.history] == [
        ("load", "WAITING", "STARTING", 1)
    ]
    assert stored.ready == []
    assert stored.active_clusters == [winners[0]]
    for cluster, result in results:
        if cluster != winners[0]:
            # The losers re-read and saw the job already taken.
            assert result.track.job("load").status is S.STARTING
            assert result.track.job("load").cluster == winners[0]
            assert any("claim" in reason for reason in result.ignored)


@pytest.mark.parametrize("from_ready_query", [True, False], ids=["known", "reread"])
async def test_racing_dispatchers_on_one_client(stores: Stores, from_ready_query: bool) -> None:
    await stores.track.insert(make_track(GUID))
    results = await race([stores], from_ready_query=from_ready_query)
    await assert_exactly_one_claim(stores, results)


@pytest.mark.parametrize("from_ready_query", [True, False], ids=["known", "reread"])
async def test_racing_dispatchers_on_two_clients(
    stores: Stores, second_client: Stores, from_ready_query: bool
) -> None:
    await stores.track.insert(make_track(GUID))
    results = await race([stores, second_client], from_ready_query=from_ready_query)
    await assert_exactly_one_claim(stores, results)


async def test_racing_for_parallel_jobs_lets_each_job_be_claimed_once(
    stores: Stores, second_client: Stores
) -> None:
    """PIOF0001 runs barcode and OCR in parallel: racers for both jobs of one asset must end
    with each job claimed exactly once, and neither claim lost."""
    track = make_track(GUID, "PIPEPIOF0001")
    track.job_list[0].status = S.DONE
    await stores.track.insert(track)
    results: list[tuple[str, Applied]] = []
    barrier = Barrier(RACERS)

    async def claim(client: Stores, job: str, cluster: str) -> None:
        found = await client.track.ready(job, 10)
        assert [t.id for t in found] == [GUID]
        await barrier.wait()
        result = await client.track.apply(
            GUID, [JobEvent(job, Event.CLAIM, cluster=cluster)], cause="dispatch", known=found[0]
        )
        results.append((job, result))

    async with anyio.create_task_group() as tg:
        for i in range(RACERS):
            job = ("barcode", "ocr")[i % 2]
            tg.start_soon(claim, (stores, second_client)[i // 2 % 2], job, f"c{i}")
    applied = sorted(job for job, r in results if r.applied)
    assert applied == ["barcode", "ocr"]
    stored = await stores.track.get(GUID)
    assert stored is not None
    assert stored.version == 2
    assert [(stored.job(j).status, stored.job(j).attempt) for j in ("barcode", "ocr")] == [
        (S.STARTING, 1),
        (S.STARTING, 1),
    ]
    assert sorted(h.job or "" for h in stored.history) == ["barcode", "ocr"]


async def test_concurrent_writers_of_different_fields_lose_no_update(
    stores: Stores, second_client: Stores
) -> None:
    """Every writer plans on the same stale version; the guard makes each re-plan on top of
    the others, so all changes arrive and the version counts every write."""
    stale = await stores.track.insert(make_track(GUID))
    flags = ["is_in_ars", "has_open_share", "update_metadata", "hpc_ready", "erda_sync"]

    async def set_flag(client: Stores, flag: str) -> None:
        result = await client.track.apply(
            GUID, [], cause=f"set {flag}", asset_fields={flag: Flag.YES}, known=stale
        )
        assert result.applied

    async def claim(client: Stores) -> None:
        result = await client.track.apply(
            GUID, [JobEvent("load", Event.CLAIM, cluster="local")], cause="dispatch", known=stale
        )
        assert result.applied

    async with anyio.create_task_group() as tg:
        for i, flag in enumerate(flags):
            tg.start_soon(set_flag, (stores, second_client)[i % 2], flag)
        tg.start_soon(claim, second_client)

    stored = await stores.track.get(GUID)
    assert stored is not None
    assert stored.version == len(flags) + 1
    assert all(getattr(stored, flag) is Flag.YES for flag in flags)
    assert stored.job("load").status is S.STARTING
    assert stored.ready == []
    assert len(stored.history) == len(flags) + 1
