"""The dispatcher's hand-off under a full throttle: offers dropped while every slot was taken
are not forgotten when newer offers arrive, and the oldest ready asset goes first."""

from __future__ import annotations

from pathlib import Path

import anyio

from dasscod.clusters import build_clusters
from dasscod.model import JobStatus, Track
from dasscod.pipeline import parse_pipeline
from dasscod.settings import ClusterSettings
from dasscod.store import Stores
from dasscod.supervisors.coordination import Throttle, Wakeups
from dasscod.supervisors.dispatch import Dispatcher
from dasscod.supervisors.launch import Launcher

PIPELINE = parse_pipeline(
    'name = "PIPEQUICK"\n[[jobs]]\nname = "load"\npriority = 1\n'
    'clusters = ["near"]\ncommand = ["true"]\n'
)


def new_track(guid: str) -> Track:
    return Track.model_validate(
        {"_id": guid, "pipeline": PIPELINE.name, "job_list": PIPELINE.initial_jobs()}
    )


async def test_an_offer_dropped_while_slots_were_full_is_claimed_before_newer_ones(
    stores: Stores, tmp_path: Path
) -> None:
    near = ClusterSettings(max_jobs=2, work_root=tmp_path / "work", state_dir=tmp_path / "jobs")
    clusters = build_clusters({"near": near})
    pipelines = {PIPELINE.name: PIPELINE}
    stores.track.pipelines = pipelines
    wakeups = Wakeups()
    throttle = Throttle(assets_in_flight=10, jobs_per_cluster={"near": 2}, wakeups=wakeups)
    launcher = Launcher(stores=stores, clusters=clusters, pipelines=pipelines,
                        callback_base="http://127.0.0.1:9/api/v1",
                        token_secret="dispatch-test-secret-0123456789abcdef", token_ttl_s=60,
                        reachability=throttle)
    dispatcher = Dispatcher("load", stores=stores, pipelines=pipelines, clusters=clusters,
                            launcher=launcher, throttle=throttle, wakeups=wakeups,
                            stopping=anyio.Event(), sweep_s=30)
    # Both slots are taken by another asset's jobs.
    busy = new_track("busy").model_copy(update={"in_flight": True})
    for job in busy.job_list:
        job.status, job.cluster = JobStatus.RUNNING, "near"
    busy.job_list = [*busy.job_list, busy.job_list[0].model_copy(update={"name": "other"})]
    throttle.observe(busy)

    older = await stores.track.insert(new_track("older"))
    dispatcher.offer(older)
    async with anyio.create_task_group() as tg:
        claimed, blocked, _ = await dispatcher.dispatch_once(tg)
    assert (claimed, blocked) == (0, True)  # no room: the offer is dropped

    throttle.observe(busy.model_copy(update={"in_flight": False, "version": 1}))  # slots free
    newer = await stores.track.insert(new_track("newer"))
    dispatcher.offer(newer)  # a newer offer arrives before the dispatcher runs again
    async with anyio.create_task_group() as tg:
        claimed, blocked, from_offers = await dispatcher.dispatch_once(tg)
    assert not from_offers, "after dropping offers the next pass must ask the store"
    assert (claimed, blocked) == (2, False)
    for guid in ("older", "newer"):
        track = await stores.track.get(guid)
        assert track is not None
        assert track.job("load").attempt == 1, f"{guid} was not claimed"
