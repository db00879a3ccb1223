"""Routing between clusters: a job goes to the first cluster of its list with room, and a
cluster that cannot be reached takes no new jobs (its in-flight ones are kept) while the
others carry on."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncssh
import pytest

from dasscod.cluster.base import SchedulerState
from dasscod.cluster.configured import build_clusters
from dasscod.coordination import Throttle, Wakeups
from dasscod.devstack.mongo import free_port
from dasscod.model import JobStatus, Track
from dasscod.pipeline import parse_pipeline
from dasscod.services.launch import scheduler_job_name
from dasscod.settings import ClusterSettings, SshSettings
from dasscod.store import Stores
from tests.integration.dispatching import load_dispatcher

PIPELINE = parse_pipeline(
    'name = "PIPEROUTE"\n[[jobs]]\nname = "load"\npriority = 1\n'
    'clusters = ["far", "near"]\ncommand = ["sleep", "30"]\n'
)


def test_an_unreachable_cluster_is_skipped_until_it_answers_again() -> None:
    throttle = Throttle(assets_in_flight=10, jobs_per_cluster={"a": 1, "b": 1},
                        wakeups=Wakeups())
    track = Track.model_validate({"_id": "t-1", "pipeline": "P"})
    assert throttle.reserve(track, ["a", "b"]) == "a"
    throttle.release("t-1", "a")
    throttle.unreachable("a", "connection refused")
    assert throttle.reserve(track, ["a", "b"]) == "b"
    throttle.release("t-1", "b")
    throttle.unreachable("b", "connection refused")
    assert throttle.reserve(track, ["a", "b"]) is None
    throttle.reached("a")
    assert throttle.reserve(track, ["a", "b"]) == "a"


async def test_jobs_go_to_the_next_cluster_while_the_first_is_unreachable(
    stores: Stores, tmp_path: Path
) -> None:
    key = tmp_path / "id_ed25519"
    key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    far = ClusterSettings(
        scheduler="slurm", transport="ssh", max_jobs=5,
        ssh=SshSettings(host="127.0.0.1", port=free_port(), user="nobody", key_file=key,
                        known_hosts=tmp_path / "known_hosts"),
        work_root=tmp_path / "far" / "work", state_dir=tmp_path / "far" / "jobs",
    )  # fmt: skip
    near = ClusterSettings(max_jobs=5, work_root=tmp_path / "near" / "work",
                           state_dir=tmp_path / "near" / "jobs")
    clusters = build_clusters({"far": far, "near": near})
    pipelines = {PIPELINE.name: PIPELINE}
    stores.track.pipelines = pipelines
    wakeups = Wakeups()
    throttle = Throttle(assets_in_flight=10, jobs_per_cluster={"far": 5, "near": 5},
                        wakeups=wakeups)
    dispatcher = load_dispatcher(stores, clusters, pipelines, throttle)

    async def dispatch(guid: str) -> Track:
        await stores.track.insert(Track.model_validate(
            {"_id": guid, "pipeline": PIPELINE.name, "job_list": PIPELINE.initial_jobs()}))
        async with anyio.create_task_group() as tg:  # waits for the submission too
            claimed, _, _ = await dispatcher.dispatch_once(tg)
        assert claimed == 1
        track = await stores.track.get(guid)
        assert track is not None
        throttle.observe(track)
        return track

    first = await dispatch("r-1")
    assert first.job("load").cluster == "far"
    # The submission's outcome is unknown: kept STARTING for the watcher, never resubmitted.
    assert first.job("load").status is JobStatus.STARTING
    assert not throttle.reachable("far")

    second = await dispatch("r-2")
    job = second.job("load")
    assert (job.cluster, job.status) == ("near", JobStatus.QUEUED)
    near_scheduler = clusters["near"].scheduler
    try:
        name = scheduler_job_name("r-2", "load", job.attempt)
        info = await near_scheduler.status({str(job.hpc_job_id): name})
        assert info[str(job.hpc_job_id)].state is not SchedulerState.UNKNOWN
    finally:
        await near_scheduler.cancel(str(job.hpc_job_id))


@pytest.fixture(autouse=True)
def _quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dasscod.coordination.UNREACHABLE_BASE_S", 60.0)
