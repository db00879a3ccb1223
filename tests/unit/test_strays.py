"""The stray-job rule shared by the watcher and the pull agent's report: which job of ours no
live attempt accounts for, which is cancelled at once, and the grace of the others."""

from __future__ import annotations

from dasscod.cluster.base import SchedulerState
from dasscod.model import Track
from dasscod.pipeline import Event, JobEvent, plan
from dasscod.pipelines import load_pipelines
from dasscod.services.strays import StrayClock, unaccounted
from tests.conftest import make_track

RUNNING, PENDING = SchedulerState.RUNNING, SchedulerState.PENDING


def _on(cluster: str, job_id: str) -> Track:
    """A track whose load attempt 1 runs on `cluster` as `job_id`."""
    track = make_track("g1")
    pipeline = load_pipelines()[track.pipeline]
    for event in (JobEvent("load", Event.CLAIM, cluster=cluster),
                  JobEvent("load", Event.SUBMITTED, attempt=1, hpc_job_id=job_id)):
        track = plan(track, [event], pipeline=pipeline, now=track.created_timestamp,
                     cause="test").track
    return track


def test_the_live_job_is_accounted_for_and_every_other_is_not() -> None:
    track = _on("c", "7.server")
    assert unaccounted(track, ("g1", "load", 1), "c", "7", RUNNING) == (None, False)
    assert unaccounted(None, ("g1", "load", 1), "c", "7", RUNNING) == (
        "asset g1 is not tracked by this daemon", True)
    assert unaccounted(track, ("g1", "nojob", 1), "c", "7", RUNNING)[1] is True
    assert unaccounted(track, ("g1", "load", 1), "c", "8", RUNNING) == (
        "a second job for the attempt (its job is 7.server)", True)
    assert unaccounted(track, ("g1", "load", 1), "other", "7", RUNNING) == (
        "the live attempt runs on cluster c", True)
    # A stale attempt: its running job gets the grace, a queued one goes at once.
    assert unaccounted(track, ("g1", "load", 3), "c", "9", RUNNING) == (
        "attempt 3 is not the live attempt (1)", False)
    assert unaccounted(track, ("g1", "load", 3), "c", "9", PENDING)[1] is True


def test_the_grace_starts_when_a_stray_is_first_seen() -> None:
    clock = StrayClock(grace_s=10)
    assert not clock.due("7", at_once=False, now=100.0)
    assert not clock.due("7", at_once=False, now=109.0)
    assert clock.due("7", at_once=False, now=110.0)
    assert clock.due("8", at_once=True, now=100.0)
    assert clock.first_warning("7") and not clock.first_warning("7")
    clock.forget_all_but({"8"})  # 7 left the scheduler: seen again, it starts over
    assert not clock.due("7", at_once=False, now=200.0)
    clock.accounted("7")
    assert not clock.due("7", at_once=False, now=205.0)
