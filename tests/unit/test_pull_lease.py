"""Pull clusters: the LEASE transition that hands a claimed job to the cluster's agent, its
expiry, and the pull settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from dasscod.model import JobStatus, Track
from dasscod.pipeline import Event, JobEvent, plan
from dasscod.pipelines import load_pipelines
from dasscod.settings import ClusterSettings
from tests.conftest import make_track

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
PIPELINE = load_pipelines()["PIPEHERB0001"]


def step(track: Track, *events: JobEvent, now: datetime = NOW) -> tuple[Track, list[str]]:
    result = plan(track, events, pipeline=PIPELINE, now=now, cause="test")
    return result.track, result.ignored


def claimed() -> Track:
    track, _ = step(make_track("g1"), JobEvent("load", Event.CLAIM, cluster="pull"))
    return track


def lease(until: datetime, attempt: int = 1) -> JobEvent:
    return JobEvent("load", Event.LEASE, attempt=attempt, lease_until=until)


def test_lease_keeps_the_job_starting_and_records_the_lease() -> None:
    track, ignored = step(claimed(), lease(NOW + timedelta(minutes=10)))
    job = track.job("load")
    assert not ignored
    assert job.status is JobStatus.STARTING and job.lease_until == NOW + timedelta(minutes=10)


def test_a_live_lease_refuses_a_second_one_and_an_expired_one_does_not() -> None:
    track, _ = step(claimed(), lease(NOW + timedelta(minutes=10)))
    again, ignored = step(track, lease(NOW + timedelta(minutes=20)))
    assert ignored and "leased until" in ignored[0]
    assert again.job("load").lease_until == NOW + timedelta(minutes=10)
    later = NOW + timedelta(minutes=11)
    renewed, ignored = step(track, lease(later + timedelta(minutes=10)), now=later)
    assert not ignored and renewed.job("load").lease_until == later + timedelta(minutes=10)


def test_no_lease_for_a_stale_attempt_or_a_submitted_job() -> None:
    _, ignored = step(claimed(), lease(NOW + timedelta(minutes=10), attempt=2))
    assert ignored and "stale attempt" in ignored[0]
    submitted, _ = step(claimed(), JobEvent("load", Event.SUBMITTED, attempt=1, hpc_job_id="7"))
    assert submitted.job("load").status is JobStatus.QUEUED
    _, ignored = step(submitted, lease(NOW + timedelta(minutes=10)))
    assert ignored


@pytest.mark.parametrize("event", [Event.SUBMITTED, Event.UNSUBMITTED])
def test_submitted_and_unsubmitted_clear_the_lease(event: Event) -> None:
    track, _ = step(claimed(), lease(NOW + timedelta(minutes=10)))
    after, _ = step(track, JobEvent("load", event, attempt=1, hpc_job_id="7"))
    assert after.job("load").lease_until is None


def test_a_new_claim_clears_the_lease() -> None:
    track, _ = step(claimed(), lease(NOW + timedelta(minutes=10)),
                    JobEvent("load", Event.UNSUBMITTED, attempt=1))
    track.job_list[0].lease_until = NOW  # as if left over
    again, _ = step(track, JobEvent("load", Event.CLAIM, cluster="pull"))
    assert again.job("load").lease_until is None


def test_pull_settings_need_a_credential_and_absolute_paths() -> None:
    ok = ClusterSettings(scheduler="pull", agent_token="a" * 32, work_root="/w",
                         state_dir="/s", pull_submit="slurm")
    assert ok.lease_s == 600
    with pytest.raises(ValidationError, match="agent_token"):
        ClusterSettings(scheduler="pull", work_root="/w", state_dir="/s")
    with pytest.raises(ValidationError, match="absolute"):
        ClusterSettings(scheduler="pull", agent_token="a" * 32)
