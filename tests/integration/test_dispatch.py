"""The dispatcher's hand-off under a full throttle: ready assets the throttle held back are
kept, and the oldest goes first once a slot frees, without asking the store; a sweep still
finds what no transition offered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from dasscod.cluster.configured import build_clusters
from dasscod.coordination import Throttle, Wakeups
from dasscod.model import JobStatus, Track, utcnow
from dasscod.pipeline import new_track_fields, parse_pipeline
from dasscod.settings import ClusterSettings
from dasscod.store import Applied, Stores
from dasscod.store.codec import to_bson
from dasscod.store.track import TrackStore
from dasscod.supervisors.dispatch import Dispatcher
from tests.integration.dispatching import load_dispatcher

PIPELINE = parse_pipeline(
    'name = "PIPEQUICK"\n[[jobs]]\nname = "load"\npriority = 1\n'
    'clusters = ["near"]\ncommand = ["true"]\n'
)


def new_track(guid: str) -> Track:
    return Track.model_validate(
        {"_id": guid, "pipeline": PIPELINE.name, "job_list": PIPELINE.initial_jobs()}
    )


def dispatcher_for(stores: Stores, tmp_path: Path, *, slots: int, sweep_s: float = 30,
                   stopping: anyio.Event | None = None) -> tuple[Dispatcher, Throttle, Track]:
    near = ClusterSettings(max_jobs=slots, work_root=tmp_path / "work",
                           state_dir=tmp_path / "jobs")
    clusters = build_clusters({"near": near})
    pipelines = {PIPELINE.name: PIPELINE}
    wakeups = Wakeups()
    throttle = Throttle(assets_in_flight=10, jobs_per_cluster={"near": slots}, wakeups=wakeups)
    # As in the daemon: the throttle follows every transition written (claims take slots).
    stores.track = TrackStore(stores.track.collection, pipelines, policy=stores.track.policy)
    stores.track.subscribe(throttle.observe)
    dispatcher = load_dispatcher(stores, clusters, pipelines, throttle, stopping=stopping,
                                 sweep_s=sweep_s)
    # Every slot is taken by another asset's jobs.
    busy = new_track("busy").model_copy(update={"in_flight": True})
    busy.job_list = [
        busy.job_list[0].model_copy(update={"name": f"job{i}", "status": JobStatus.RUNNING,
                                            "cluster": "near"})
        for i in range(slots)
    ]
    throttle.observe(busy)
    return dispatcher, throttle, busy


async def claimed(stores: Stores, guid: str) -> bool:
    track = await stores.track.get(guid)
    assert track is not None
    return track.job("load").attempt == 1


async def test_a_ready_asset_held_back_is_claimed_before_a_newer_one_without_a_query(
    stores: Stores, tmp_path: Path
) -> None:
    dispatcher, throttle, busy = dispatcher_for(stores, tmp_path, slots=1)
    async with anyio.create_task_group() as tg:
        await dispatcher.dispatch_once(tg)  # the start-up pass asks the store: nothing yet
    older = await stores.track.insert(new_track("older"))
    dispatcher.offer(older)
    async with anyio.create_task_group() as tg:
        assert await dispatcher.dispatch_once(tg) == (0, True, True)  # no room: kept

    throttle.observe(busy.model_copy(update={"in_flight": False, "version": 1}))  # slot frees
    newer = await stores.track.insert(new_track("newer"))
    dispatcher.offer(newer)  # a newer offer arrives before the dispatcher runs again
    async with anyio.create_task_group() as tg:
        claimed_now, blocked, from_offers = await dispatcher.dispatch_once(tg)
    assert from_offers, "what the throttle held back is known: no query for it"
    assert (claimed_now, blocked) == (1, True)  # one slot: the older one, then full again
    assert await claimed(stores, "older")
    assert not await claimed(stores, "newer")


async def test_the_sweep_finds_an_older_ready_asset_that_was_never_offered(
    stores: Stores, tmp_path: Path
) -> None:
    stopping = anyio.Event()
    dispatcher, throttle, busy = dispatcher_for(stores, tmp_path, slots=1, sweep_s=0.1,
                                                stopping=stopping)
    async with anyio.create_task_group() as tg:
        await dispatcher.dispatch_once(tg)  # the start-up pass: nothing ready yet
    # Written by another process (the CLI, say): no transition of ours offers it.
    await stores.track.collection.insert_one(
        to_bson(new_track_fields(new_track("unseen"), PIPELINE, utcnow()).to_document())
    )
    offered = await stores.track.insert(new_track("offered"))
    dispatcher.offer(offered)
    async with anyio.create_task_group() as tg:
        assert await dispatcher.dispatch_once(tg) == (0, True, True)  # kept; "unseen" unknown

    queried = anyio.Event()
    ready = stores.track.ready

    async def ready_and_tell(job: str, limit: int, **kwargs: Any) -> list[Track]:
        found = await ready(job, limit, **kwargs)
        queried.set()
        return found

    first_claim = anyio.Event()
    apply = stores.track.apply

    async def apply_and_tell(guid: str, *args: Any, **kwargs: Any) -> Applied:
        result = await apply(guid, *args, **kwargs)
        first_claim.set()
        return result

    stores.track.ready = ready_and_tell  # type: ignore[method-assign]
    stores.track.apply = apply_and_tell  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.run)
        with anyio.fail_after(10):
            await queried.wait()  # a sweep asked the store, and kept what it found
        throttle.observe(busy.model_copy(update={"in_flight": False, "version": 1}))
        with anyio.fail_after(10):
            await first_claim.wait()
        assert await claimed(stores, "unseen"), "the older asset goes first"
        assert not await claimed(stores, "offered")
        stopping.set()
        dispatcher.wakeups.notify("load")
