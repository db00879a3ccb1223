"""TrackStore over the real wire protocol: guarded writes, re-planning, queries."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast

import anyio
import pytest
from pymongo.asynchronous.collection import AsyncCollection

from dasscod.model import Flag, JobStatus, Track, utcnow
from dasscod.pipeline import Event, JobEvent
from dasscod.pipelines import load_pipelines
from dasscod.queues import FlagQuery
from dasscod.store import AssetExists, AssetNotFound, Stores, TrackStore, TransitionConflict
from dasscod.store.track import MAX_CONFLICTS
from tests.conftest import make_track

S = JobStatus
GUID = "asset-0001"

NOT_IN_ARS = FlagQuery("is_in_ars", (Flag.NO,))


class SpyCollection:
    """The real collection, with every `update_one` recorded; optionally another writer
    sneaks in a version bump before each of them (a writer that always wins the race)."""

    def __init__(self, inner: AsyncCollection[dict[str, Any]], *, always_lose: bool = False):
        self.inner = inner
        self.always_lose = always_lose
        self.updates: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def update_one(self, filter: dict[str, Any], update: dict[str, Any]) -> Any:
        self.updates.append(filter)
        if self.always_lose:
            await self.inner.update_one({"_id": filter["_id"]}, {"$inc": {"version": 1}})
        return await self.inner.update_one(filter, update)


def to_ms(value: Any) -> Any:
    """BSON dates keep milliseconds: compare documents at that precision."""
    if isinstance(value, datetime):
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    if isinstance(value, dict):
        return {k: to_ms(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_ms(v) for v in value]
    return value


def same_document(a: Track | None, b: Track | None) -> bool:
    assert a is not None and b is not None
    return bool(to_ms(a.model_dump()) == to_ms(b.model_dump()))


def spied(stores: Stores, *, always_lose: bool = False) -> tuple[TrackStore, SpyCollection]:
    spy = SpyCollection(stores.track.collection, always_lose=always_lose)
    store = TrackStore(
        cast(AsyncCollection[dict[str, Any]], spy),
        stores.track.pipelines,
        policy=stores.track.policy,
    )
    return store, spy


async def test_insert_fills_in_the_derived_fields(stores: Stores) -> None:
    inserted = await stores.track.insert(make_track(GUID))
    stored = await stores.track.get(GUID)
    assert stored is not None
    assert same_document(stored, inserted)
    assert stored.ready == ["load"]
    assert stored.ready_since is not None
    assert stored.jobs_status is S.WAITING
    assert stored.in_flight is False
    assert stored.version == 0


async def test_inserting_an_asset_twice_is_refused(stores: Stores) -> None:
    await stores.track.insert(make_track(GUID))
    with pytest.raises(AssetExists):
        await stores.track.insert(make_track(GUID))
    assert await stores.track.collection.count_documents({}) == 1


async def test_apply_on_an_unknown_asset_raises_and_creates_nothing(stores: Stores) -> None:
    with pytest.raises(AssetNotFound):
        await stores.track.apply("no-such-asset", [JobEvent("load", Event.CLAIM)], cause="t")
    with pytest.raises(AssetNotFound):
        await stores.track.set_fields("no-such-asset", {"hpc_ready": Flag.YES}, cause="t")
    assert await stores.track.collection.count_documents({}) == 0


async def test_a_transition_is_one_write_with_history_and_a_version_bump(stores: Stores) -> None:
    await stores.track.insert(make_track(GUID))
    result = await stores.track.apply(
        GUID, [JobEvent("load", Event.CLAIM, cluster="local")], cause="dispatch"
    )
    assert result.applied
    raw = await stores.track.collection.find_one({"_id": GUID})
    assert raw is not None
    assert raw["version"] == 1
    assert raw["job_list"][0]["status"] == "STARTING"
    assert raw["job_list"][0]["attempt"] == 1
    assert raw["job_list"][0]["cluster"] == "local"
    assert raw["ready"] == []
    assert raw["in_flight"] is True
    assert raw["active_clusters"] == ["local"]
    assert raw["queues"] == ["in_flight", "on:local", "is_in_ars=NO", "status:RUNNING",
                             "at:load"]
    assert [(h["job"], h["from"], h["to"], h["cause"]) for h in raw["history"]] == [
        ("load", "WAITING", "STARTING", "dispatch: claim")
    ]
    assert same_document(result.track, await stores.track.get(GUID))


async def test_an_ignored_event_writes_nothing(stores: Stores) -> None:
    await stores.track.insert(make_track(GUID))
    store, spy = spied(stores)
    result = await store.apply(GUID, [JobEvent("load", Event.FINISHED, attempt=1)], cause="cb")
    assert not result.applied
    assert result.ignored
    assert spy.updates == []
    stored = await stores.track.get(GUID)
    assert stored is not None and stored.version == 0 and stored.history == []


async def test_a_stale_document_loses_the_guard_and_is_replanned(stores: Stores) -> None:
    stale = await stores.track.insert(make_track(GUID))
    await stores.track.apply(GUID, [JobEvent("load", Event.CLAIM, cluster="local")], cause="d")
    await stores.track.apply(GUID, [JobEvent("load", Event.FINISHED, attempt=1)], cause="cb")

    store, spy = spied(stores)
    result = await store.apply(
        GUID, [], cause="ars", asset_fields={"is_in_ars": Flag.YES}, known=stale
    )
    assert result.applied
    assert [f["version"] for f in spy.updates] == [0, 2]  # lost on the stale, won on re-read
    stored = await stores.track.get(GUID)
    assert stored is not None
    assert stored.version == 3
    assert stored.is_in_ars is Flag.YES
    assert stored.job("load").status is S.DONE  # the other writer's work is kept
    assert stored.ready == ["barcode"]
    assert same_document(result.track, stored)


async def test_a_stale_claim_is_replanned_into_a_no_op(stores: Stores) -> None:
    stale = await stores.track.insert(make_track(GUID))
    await stores.track.apply(GUID, [JobEvent("load", Event.CLAIM, cluster="a")], cause="d1")
    store, spy = spied(stores)
    result = await store.apply(
        GUID, [JobEvent("load", Event.CLAIM, cluster="b")], cause="d2", known=stale
    )
    assert not result.applied
    assert len(spy.updates) == 1
    stored = await stores.track.get(GUID)
    assert stored is not None
    assert (stored.version, stored.job("load").attempt, stored.job("load").cluster) == (1, 1, "a")
    assert len(stored.history) == 1


async def test_a_write_that_always_loses_gives_up_with_transition_conflict(
    stores: Stores,
) -> None:
    await stores.track.insert(make_track(GUID))
    store, spy = spied(stores, always_lose=True)
    with pytest.raises(TransitionConflict):
        await store.apply(GUID, [JobEvent("load", Event.CLAIM)], cause="dispatch")
    assert len(spy.updates) == MAX_CONFLICTS
    stored = await stores.track.get(GUID)
    assert stored is not None
    assert stored.job("load").status is S.WAITING
    assert stored.history == []
    assert stored.version == MAX_CONFLICTS  # only the rival's bumps


async def test_ready_returns_only_assets_whose_job_is_ready(stores: Stores) -> None:
    for guid in ("fresh-1", "fresh-2", "claimed", "loaded", "paused", "piof-loaded"):
        pipeline = "PIPEPIOF0001" if guid.startswith("piof") else "PIPEHERB0001"
        await stores.track.insert(make_track(guid, pipeline))
    t = stores.track
    await t.apply("claimed", [JobEvent("load", Event.CLAIM)], cause="d")
    for guid in ("loaded", "piof-loaded"):
        await t.apply(guid, [JobEvent("load", Event.CLAIM)], cause="d")
        await t.apply(guid, [JobEvent("load", Event.FINISHED, attempt=1)], cause="cb")
    await t.set_fields("paused", {"available_for_services": Flag.PAUSED}, cause="op")
    # fresh-1 becomes ready again later than fresh-2: it must come second.
    later = utcnow() + timedelta(minutes=1)
    await t.apply("fresh-1", [], cause="op", asset_fields={"available_for_services": Flag.PAUSED})
    await t.apply(
        "fresh-1", [], cause="op", asset_fields={"available_for_services": Flag.YES}, now=later
    )

    assert [x.id for x in await t.ready("load", 10)] == ["fresh-2", "fresh-1"]
    assert [x.id for x in await t.ready("load", 1)] == ["fresh-2"]
    assert sorted(x.id for x in await t.ready("barcode", 10)) == ["loaded", "piof-loaded"]
    assert [x.id for x in await t.ready("ocr", 10)] == ["piof-loaded"]
    assert await t.ready("clean_up", 10) == []


async def test_retries_become_due_at_their_not_before_time(stores: Stores) -> None:
    await stores.track.insert(make_track(GUID))
    now = utcnow()
    await stores.track.apply(GUID, [JobEvent("load", Event.CLAIM)], cause="d", now=now)
    failed = await stores.track.apply(
        GUID, [JobEvent("load", Event.FAILED, attempt=1, error="x")], cause="cb", now=now
    )
    not_before = failed.track.job("load").not_before
    assert not_before is not None and not_before > now
    assert await stores.track.due_retries(now) == []
    due = await stores.track.due_retries(not_before + timedelta(seconds=1))
    assert [x.id for x in due] == [GUID]
    next_due = await stores.track.next_retry_due()
    assert next_due is not None
    assert abs(next_due - not_before) < timedelta(milliseconds=1)  # BSON keeps milliseconds


async def test_subscribers_see_every_write_and_no_no_op(mongo_uri: str, stores: Stores) -> None:
    seen: list[Track] = []
    also: list[Track] = []
    other = Stores.connect(mongo_uri, stores.db.name, load_pipelines())
    other.track.subscribe(seen.append)
    unsubscribe = other.track.subscribe(also.append)
    try:
        await other.track.insert(make_track(GUID))
        unsubscribe()
        await other.track.apply(GUID, [JobEvent("load", Event.CLAIM)], cause="d")
        await other.track.apply(GUID, [JobEvent("load", Event.CLAIM)], cause="d")  # no-op
    finally:
        await other.close()
    assert [(x.version, x.job("load").status) for x in seen] == [(0, S.WAITING), (1, S.STARTING)]
    assert [x.version for x in also] == [0]  # told nothing after it unsubscribed


async def test_a_no_op_decided_on_a_remembered_copy_is_confirmed_against_the_store(
    mongo_uri: str, stores: Stores
) -> None:
    """The store remembers its own last write; another writer (a CLI, a second daemon)
    moved the job on meanwhile, so "stale attempt" on the remembered copy would be wrong."""
    other = Stores.connect(mongo_uri, stores.db.name, load_pipelines())
    try:
        t = stores.track
        await t.insert(make_track(GUID))
        await t.apply(GUID, [JobEvent("load", Event.CLAIM)], cause="d")
        await t.apply(GUID, [JobEvent("load", Event.FAILED, attempt=1)], cause="cb")
        later = utcnow() + timedelta(hours=2)
        await other.track.apply(GUID, [JobEvent("load", Event.RETRY_DUE)], cause="hk", now=later)
        await other.track.apply(GUID, [JobEvent("load", Event.CLAIM)], cause="d", now=later)

        result = await t.apply(GUID, [JobEvent("load", Event.STARTED, attempt=2)], cause="cb")
    finally:
        await other.close()
    assert result.applied
    stored = await stores.track.get(GUID)
    assert stored is not None
    assert (stored.job("load").status, stored.job("load").attempt) == (S.RUNNING, 2)
    assert stored.version == 5


async def test_a_change_decided_on_a_remembered_copy_loses_the_guard(
    mongo_uri: str, stores: Stores
) -> None:
    other = Stores.connect(mongo_uri, stores.db.name, load_pipelines())
    try:
        t = stores.track
        await t.insert(make_track(GUID))
        await t.apply(GUID, [JobEvent("load", Event.CLAIM)], cause="d")
        await other.track.apply(GUID, [JobEvent("load", Event.FINISHED, attempt=1)], cause="cb")

        late = await t.apply(GUID, [JobEvent("load", Event.FAILED, attempt=1)], cause="cb")
    finally:
        await other.close()
    assert not late.applied
    stored = await stores.track.get(GUID)
    assert stored is not None
    assert stored.job("load").status is S.DONE
    assert [h.to for h in stored.history] == ["STARTING", "DONE"]
    assert stored.version == 2


async def test_the_queue_queries_follow_the_flags_written(stores: Stores) -> None:
    await stores.track.insert(make_track(GUID))
    assert [t.id for t in await stores.track.ars_queue(NOT_IN_ARS, 10)] == [GUID]
    await stores.track.set_fields(GUID, {"is_in_ars": Flag.YES, "has_open_share": Flag.AWAIT},
                                  cause="test")
    assert await stores.track.ars_queue(FlagQuery("is_in_ars", (Flag.NO, Flag.AWAIT)), 10) == []
    assert await stores.track.open_shares() == [(0.0, False)]
    await stores.track.set_fields(GUID, {"available_for_services": Flag.PAUSED}, cause="test")
    assert [t.id for t in await stores.track.paused()] == [GUID]
    with pytest.raises(ValueError, match="not a queue"):
        await stores.track.count_flag("erda_sync", Flag.YES)  # the steady state: no tag


async def test_concurrent_writes_to_one_asset_take_turns_instead_of_racing(
    stores: Stores,
) -> None:
    """The launcher's "submitted" and the job's "started" often arrive together: written one
    after the other, each lands with its first update, and no re-read is needed."""
    store, spy = spied(stores)
    track = await store.insert(make_track(GUID))
    claimed = await store.apply(GUID, [JobEvent("load", Event.CLAIM, cluster="local")],
                                cause="dispatch", known=track)
    spy.updates.clear()
    reads = 0
    find_one = spy.inner.find_one

    async def counted_find_one(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await find_one(*args, **kwargs)

    spy.find_one = counted_find_one  # type: ignore[attr-defined]
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(store.apply, GUID, [JobEvent("load", Event.SUBMITTED, attempt=1,
                                                            hpc_job_id="7")],
                              cause="dispatch", known=claimed.track))
        tg.start_soon(partial(store.apply, GUID, [JobEvent("load", Event.STARTED, attempt=1)],
                              cause="callback", known=claimed.track))
    assert len(spy.updates) == 2 and reads == 0
    stored = await stores.track.get(GUID)
    assert stored is not None
    assert (stored.version, stored.job("load").status, stored.job("load").hpc_job_id) == (
        3, S.RUNNING, "7",
    )  # fmt: skip
