"""The pure job state machine (`dasscod.pipeline.plan`) and the state derived from it.

The expectations below are written out by hand from docs/domain.md and the pipeline module's
documented rules; they are deliberately not computed from `TRANSITIONS`, so a change to the
table that breaks a rule shows up here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest

from dasscod.model import Flag, Job, JobStatus, Track
from dasscod.pipeline import (
    Event,
    JobEvent,
    Pipeline,
    Plan,
    RetryPolicy,
    jobs_status,
    parse_pipeline,
    plan,
    ready_jobs,
)
from dasscod.pipelines import load_pipelines
from tests.conftest import make_track

S = JobStatus
E = Event

PIPELINES = load_pipelines()
HERB = PIPELINES["PIPEHERB0001"]
PIOF = PIPELINES["PIPEPIOF0001"]
GUID = "asset-0001"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

#: What each event does to a job in each status (attempt 1 of 3, retryable failure).
#: Any status not listed for an event must be left exactly as it is.
EXPECTED: dict[Event, dict[JobStatus, JobStatus]] = {
    E.CLAIM: {S.WAITING: S.STARTING},
    E.SUBMITTED: {S.STARTING: S.QUEUED, S.QUEUED: S.QUEUED, S.RUNNING: S.RUNNING},
    E.SUBMIT_FAILED: {S.STARTING: S.RETRY},
    E.QUEUED: {S.STARTING: S.QUEUED, S.QUEUED: S.QUEUED},
    E.STARTED: {S.STARTING: S.RUNNING, S.QUEUED: S.RUNNING},
    E.FINISHED: {S.STARTING: S.DONE, S.QUEUED: S.DONE, S.RUNNING: S.DONE},
    E.FAILED: {S.STARTING: S.RETRY, S.QUEUED: S.RETRY, S.RUNNING: S.RETRY},
    E.LOST: {S.STARTING: S.RETRY, S.QUEUED: S.RETRY, S.RUNNING: S.RETRY},
    E.TIMED_OUT: {S.STARTING: S.RETRY, S.QUEUED: S.RETRY, S.RUNNING: S.RETRY},
    E.RETRY_DUE: {S.RETRY: S.WAITING},
    E.CANCEL: {S.WAITING: S.STOPPED, S.RETRY: S.STOPPED},
    E.UNSUBMITTED: {S.STARTING: S.WAITING},
    E.OPERATOR_RETRY: {S.ERROR: S.WAITING, S.CRITICAL_ERROR: S.WAITING, S.FAILED: S.WAITING},
    E.LEASE: {S.STARTING: S.STARTING},  # pull clusters: the agent takes the job
    # `dasscod cancel`: whatever has not ended ends CANCELLED; an ended job stays as it ended.
    E.OPERATOR_CANCEL: {S.WAITING: S.CANCELLED, S.STARTING: S.CANCELLED, S.QUEUED: S.CANCELLED,
                        S.RUNNING: S.CANCELLED, S.RETRY: S.CANCELLED, S.PAUSED: S.CANCELLED},
    # `dasscod retry --from`: a job that ended (or waits for a retry) runs again; never one
    # that is live.
    E.OPERATOR_RERUN: {S.DONE: S.WAITING, S.FAILED: S.WAITING, S.ERROR: S.WAITING,
                       S.CRITICAL_ERROR: S.WAITING, S.STOPPED: S.WAITING,
                       S.CANCELLED: S.WAITING, S.RETRY: S.WAITING},
    # dispatch: a job that cannot run at all (its pipeline is unknown) is in ERROR at once.
    E.REFUSED: {S.WAITING: S.ERROR, S.RETRY: S.ERROR},
}

#: Everything that reaches the state machine from outside the operator's hands.
AUTOMATIC_EVENTS = [
    E.CLAIM,
    E.SUBMITTED,
    E.SUBMIT_FAILED,
    E.QUEUED,
    E.STARTED,
    E.FINISHED,
    E.FAILED,
    E.LOST,
    E.TIMED_OUT,
    E.UNSUBMITTED,
]


def track_of(pipeline: Pipeline = HERB, guid: str = GUID) -> Track:
    return make_track(guid, pipeline.name)


def with_jobs(track: Track, **jobs: Mapping[str, object]) -> Track:
    """A copy of `track` with the named jobs' fields changed."""
    new = track.model_copy(deep=True)
    new.job_list = [
        j.model_copy(update=dict(jobs[j.name])) if j.name in jobs else j for j in new.job_list
    ]
    return new


def statuses(track: Track) -> dict[str, JobStatus]:
    return {j.name: j.status for j in track.job_list}


def run(
    track: Track,
    *events: JobEvent,
    pipeline: Pipeline | None = HERB,
    now: datetime = NOW,
    cause: str = "test",
    policy: RetryPolicy = RetryPolicy(),
    **asset_fields: object,
) -> Plan:
    return plan(
        track,
        events,
        pipeline=pipeline,
        now=now,
        cause=cause,
        asset_fields=asset_fields or None,
        policy=policy,
    )


# --------------------------------------------------------------------------- every event x state


def test_the_expectation_table_covers_every_event() -> None:
    assert set(EXPECTED) == set(Event)


@pytest.mark.parametrize("status", list(JobStatus))
@pytest.mark.parametrize("event", list(Event))
def test_every_event_in_every_state(event: Event, status: JobStatus) -> None:
    track = with_jobs(track_of(), load={"status": status, "attempt": 1})
    result = run(track, JobEvent("load", event, attempt=1))

    expected = EXPECTED[event].get(status, status)
    job = result.track.job("load")
    assert job.status is expected
    moves = [(h.job, h.from_, h.to) for h in result.history]
    if expected is status:
        assert moves == []
    else:
        assert moves == [("load", status, expected)]
        assert result.history[0].cause == f"test: {event.value}"
        assert result.history[0].attempt == job.attempt
        assert result.history[0].at == NOW
        assert result.set_fields["job_list.0.status"] is expected
    if status not in EXPECTED[event]:
        assert not result.changed
        assert result.track == track
        assert result.ignored, "an illegal move must be reported as ignored"
    # Other jobs are never touched by an event for `load`.
    assert result.track.job_list[1:] == track.job_list[1:]


@pytest.mark.parametrize(
    "status", [S.DONE, S.ERROR, S.CRITICAL_ERROR, S.FAILED, S.STOPPED, S.RETRY, S.CANCELLED]
)
@pytest.mark.parametrize("event", AUTOMATIC_EVENTS)
def test_no_callback_moves_a_settled_or_retrying_job(event: Event, status: JobStatus) -> None:
    track = with_jobs(track_of(), load={"status": status, "attempt": 1, "hpc_job_id": "77"})
    result = run(
        track, JobEvent("load", event, attempt=1, hpc_job_id="99", error="late", retryable=False)
    )
    assert not result.changed
    assert result.track == track
    assert result.history == []
    assert result.ignored


@pytest.mark.parametrize("status", list(JobStatus))
@pytest.mark.parametrize("event", list(Event))
def test_applying_an_event_twice_equals_applying_it_once(event: Event, status: JobStatus) -> None:
    track = with_jobs(track_of(), load={"status": status, "attempt": 1})
    ev = JobEvent("load", event, attempt=1, hpc_job_id="4711", error="boom")
    once = run(track, ev)
    again = run(once.track, ev)
    assert not again.changed
    assert again.history == []
    assert again.track == once.track
    both = run(track, ev, ev)
    assert both.set_fields == once.set_fields
    assert both.history == once.history


# --------------------------------------------------------------------------- out of order, stale


def test_finished_before_started_completes_and_the_late_start_is_ignored() -> None:
    track = with_jobs(track_of(), load={"status": S.QUEUED, "attempt": 1, "hpc_job_id": "12"})
    done = run(track, JobEvent("load", E.FINISHED, attempt=1, run_time_s=3.5))
    assert done.track.job("load").status is S.DONE
    assert done.track.job("load").run_time_s == 3.5
    assert done.track.job("load").exit_state == "COMPLETED"
    late = run(done.track, JobEvent("load", E.STARTED, attempt=1, at=NOW))
    assert not late.changed
    assert late.track.job("load").status is S.DONE
    assert late.track.job("load").job_start_time is None


def test_finished_straight_from_starting_and_late_queued_and_started_are_ignored() -> None:
    track = with_jobs(track_of(), load={"status": S.STARTING, "attempt": 1})
    done = run(track, JobEvent("load", E.FINISHED, attempt=1))
    assert done.track.job("load").status is S.DONE
    for ev in (E.QUEUED, E.STARTED, E.SUBMITTED, E.FAILED):
        late = run(done.track, JobEvent("load", ev, attempt=1, hpc_job_id="5"))
        assert not late.changed, ev
    assert done.track.ready == ["barcode"]


def test_queued_after_running_is_ignored() -> None:
    started_at = NOW - timedelta(minutes=5)
    track = with_jobs(
        track_of(),
        load={"status": S.RUNNING, "attempt": 1, "hpc_job_id": "12", "job_start_time": started_at},
    )
    late = run(track, JobEvent("load", E.QUEUED, attempt=1, hpc_job_id="13"))
    assert not late.changed
    assert late.track.job("load").status is S.RUNNING
    assert late.track.job("load").hpc_job_id == "12"


def test_started_before_queued_runs_and_the_late_queued_is_ignored() -> None:
    track = with_jobs(track_of(), load={"status": S.STARTING, "attempt": 1})
    running = run(track, JobEvent("load", E.STARTED, attempt=1, hpc_job_id="31"))
    assert running.track.job("load").status is S.RUNNING
    assert running.track.job("load").hpc_job_id == "31"
    late = run(running.track, JobEvent("load", E.QUEUED, attempt=1, hpc_job_id="31"))
    assert not late.changed


def test_a_submission_report_after_the_job_started_keeps_it_running() -> None:
    track = with_jobs(track_of(), load={"status": S.RUNNING, "attempt": 1})
    result = run(track, JobEvent("load", E.SUBMITTED, attempt=1, hpc_job_id="88"))
    assert result.track.job("load").status is S.RUNNING
    assert result.track.job("load").hpc_job_id == "88"
    assert result.history == []


@pytest.mark.parametrize("event", [E.QUEUED, E.STARTED, E.FINISHED, E.FAILED, E.LOST])
def test_a_stale_attempts_event_is_ignored(event: Event) -> None:
    track = with_jobs(track_of(), load={"status": S.RUNNING, "attempt": 2})
    result = run(track, JobEvent("load", event, attempt=1))
    assert not result.changed
    assert result.track.job("load").status is S.RUNNING
    assert any("stale attempt 1" in reason for reason in result.ignored)


def test_the_current_attempts_event_applies_after_a_retry() -> None:
    track = with_jobs(track_of(), load={"status": S.RUNNING, "attempt": 1})
    t = run(track, JobEvent("load", E.FAILED, attempt=1, error="node died")).track
    assert t.job("load").status is S.RETRY
    t = run(t, JobEvent("load", E.RETRY_DUE), now=NOW + timedelta(hours=1)).track
    t = run(t, JobEvent("load", E.CLAIM, cluster="local")).track
    assert (t.job("load").status, t.job("load").attempt) == (S.STARTING, 2)
    stale = run(t, JobEvent("load", E.STARTED, attempt=1))
    assert not stale.changed
    current = run(t, JobEvent("load", E.STARTED, attempt=2))
    assert current.track.job("load").status is S.RUNNING


def test_events_for_an_unknown_job_are_ignored() -> None:
    result = run(track_of(), JobEvent("no_such_job", E.FINISHED, attempt=1))
    assert not result.changed
    assert result.ignored == ["finished: asset has no job 'no_such_job'"]


# --------------------------------------------------------------------------- retries


def test_retry_with_backoff_then_error_after_max_attempts() -> None:
    policy = RetryPolicy(backoff_s=10, backoff_max_s=1000)
    t = track_of()
    assert t.job("load").max_attempts == 3
    now = NOW
    for attempt in (1, 2):
        t = run(t, JobEvent("load", E.CLAIM, cluster="local"), now=now, policy=policy).track
        t = run(t, JobEvent("load", E.STARTED, attempt=attempt), now=now).track
        failed = run(
            t, JobEvent("load", E.FAILED, attempt=attempt, error="oom"), now=now, policy=policy
        )
        t = failed.track
        job = t.job("load")
        assert job.status is S.RETRY
        assert job.last_error == "oom"
        assert job.not_before is not None and job.not_before > now
        base = 10 * 2 ** (attempt - 1)
        assert timedelta(seconds=base) <= job.not_before - now <= timedelta(seconds=base * 1.25)
        assert job.not_before == now + policy.delay(GUID, "load", attempt)
        assert t.jobs_status is S.RETRY
        assert t.retry_due == job.not_before
        assert t.ready == []
        assert [(h.from_, h.to) for h in failed.history] == [(S.RUNNING, S.RETRY)]
        now = job.not_before
        t = run(t, JobEvent("load", E.RETRY_DUE), now=now).track
        assert t.job("load").status is S.WAITING
        assert t.ready == ["load"]
        assert t.retry_due is None
    t = run(t, JobEvent("load", E.CLAIM, cluster="local"), now=now).track
    assert t.job("load").attempt == 3
    assert t.job("load").not_before is None
    final = run(t, JobEvent("load", E.FAILED, attempt=3, error="oom"), now=now, policy=policy)
    job = final.track.job("load")
    assert job.status is S.ERROR
    assert job.not_before is None
    assert final.track.jobs_status is S.ERROR
    assert final.track.ready == []
    assert final.track.retry_due is None
    assert final.track.in_flight is False


def test_not_retryable_failure_is_an_error_at_once() -> None:
    track = with_jobs(track_of(), load={"status": S.RUNNING, "attempt": 1})
    result = run(track, JobEvent("load", E.FAILED, attempt=1, retryable=False, error="bad input"))
    job = result.track.job("load")
    assert job.status is S.ERROR
    assert job.not_before is None
    assert result.track.jobs_status is S.ERROR
    assert result.history[0].cause == "test: failed (bad input)"


def test_not_retryable_submission_failure_is_an_error() -> None:
    track = with_jobs(track_of(), load={"status": S.STARTING, "attempt": 1})
    result = run(track, JobEvent("load", E.SUBMIT_FAILED, attempt=1, retryable=False))
    assert result.track.job("load").status is S.ERROR


def piof_at_derivatives(**derivatives: object) -> Track:
    done = {"status": S.DONE, "attempt": 1}
    return with_jobs(
        track_of(PIOF), load=done, barcode=done, ocr=done, derivatives=dict(derivatives)
    )


def test_allow_failure_after_the_last_attempt_is_accepted_and_the_pipeline_goes_on() -> None:
    track = piof_at_derivatives(status=S.RUNNING, attempt=3)
    result = run(track, JobEvent("derivatives", E.FAILED, attempt=3), pipeline=PIOF)
    assert result.track.job("derivatives").status is S.FAILED
    assert result.track.jobs_status is S.WAITING
    assert result.track.ready == ["upload"]


def test_allow_failure_still_retries_while_attempts_remain() -> None:
    track = piof_at_derivatives(status=S.RUNNING, attempt=1)
    result = run(track, JobEvent("derivatives", E.FAILED, attempt=1), pipeline=PIOF)
    assert result.track.job("derivatives").status is S.RETRY


def test_allow_failure_with_a_not_retryable_failure_is_failed_at_once() -> None:
    track = piof_at_derivatives(status=S.RUNNING, attempt=1)
    result = run(
        track, JobEvent("derivatives", E.FAILED, attempt=1, retryable=False), pipeline=PIOF
    )
    assert result.track.job("derivatives").status is S.FAILED
    assert result.track.ready == ["upload"]


def test_without_allow_failure_the_same_failure_stops_the_asset() -> None:
    done = {"status": S.DONE, "attempt": 1}
    track = with_jobs(
        track_of(),
        load=done,
        barcode=done,
        ocr=done,
        derivatives={"status": S.RUNNING, "attempt": 3},
    )
    result = run(track, JobEvent("derivatives", E.FAILED, attempt=3))
    assert result.track.job("derivatives").status is S.ERROR
    assert result.track.jobs_status is S.ERROR
    assert result.track.ready == []


@pytest.mark.parametrize("event", [E.LOST, E.TIMED_OUT])
def test_lost_and_timed_out_jobs_are_retried(event: Event) -> None:
    track = with_jobs(track_of(), load={"status": S.QUEUED, "attempt": 1})
    result = run(track, JobEvent("load", event))
    assert result.track.job("load").status is S.RETRY
    assert result.track.job("load").last_error == event.value


def test_operator_retry_grants_fresh_attempts() -> None:
    track = with_jobs(track_of(), load={"status": S.ERROR, "attempt": 3, "max_attempts": 3})
    result = run(track, JobEvent("load", E.OPERATOR_RETRY))
    job = result.track.job("load")
    assert job.status is S.WAITING
    assert job.max_attempts == 3 + 3
    assert result.track.ready == ["load"]
    assert result.track.jobs_status is S.WAITING


def test_unsubmitted_gives_the_attempt_back() -> None:
    track = run(track_of(), JobEvent("load", E.CLAIM, cluster="local")).track
    result = run(track, JobEvent("load", E.UNSUBMITTED, attempt=1))
    assert result.track.job("load").status is S.WAITING
    assert result.track.job("load").attempt == 0
    assert result.track.ready == ["load"]


# --------------------------------------------------------------------------- device target


def test_cancelling_the_rest_of_the_pipeline_after_a_device_target() -> None:
    """What the barcode callback does for a device target: FINISHED for the barcode job and
    CANCEL for every job still WAITING or in RETRY (dasscod.services.callbacks._barcode_effects)."""
    track = with_jobs(
        track_of(PIOF),
        load={"status": S.DONE, "attempt": 1},
        barcode={"status": S.RUNNING, "attempt": 1},
        ocr={"status": S.RETRY, "attempt": 1, "not_before": NOW + timedelta(minutes=1)},
    )
    cancel = [
        JobEvent(j.name, E.CANCEL) for j in track.job_list if j.status in (S.WAITING, S.RETRY)
    ]
    result = run(track, JobEvent("barcode", E.FINISHED, attempt=1), *cancel, pipeline=PIOF)
    assert statuses(result.track) == {
        "load": S.DONE,
        "barcode": S.DONE,
        "ocr": S.STOPPED,
        "derivatives": S.STOPPED,
        "upload": S.STOPPED,
        "clean_up": S.STOPPED,
    }
    assert result.track.jobs_status is S.DONE
    assert result.track.ready == []
    assert result.track.retry_due is None
    assert result.track.in_flight is False
    assert [(h.job, h.to) for h in result.history] == [
        ("barcode", S.DONE),
        ("ocr", S.STOPPED),
        ("derivatives", S.STOPPED),
        ("upload", S.STOPPED),
        ("clean_up", S.STOPPED),
    ]


def test_cancel_leaves_a_running_job_alone() -> None:
    track = with_jobs(
        track_of(PIOF),
        load={"status": S.DONE, "attempt": 1},
        barcode={"status": S.DONE, "attempt": 1},
        ocr={"status": S.RUNNING, "attempt": 1},
    )
    result = run(track, JobEvent("ocr", E.CANCEL), JobEvent("upload", E.CANCEL), pipeline=PIOF)
    assert result.track.job("ocr").status is S.RUNNING
    assert result.track.job("upload").status is S.STOPPED
    assert result.track.jobs_status is S.RUNNING
    finished = run(result.track, JobEvent("ocr", E.FINISHED, attempt=1), pipeline=PIOF)
    assert finished.track.ready == ["derivatives"]


# --------------------------------------------------------------------------- jobs_status


def jobs(*states: JobStatus) -> list[Job]:
    return [Job(name=f"j{i}", priority=i + 1, status=s) for i, s in enumerate(states)]


@pytest.mark.parametrize(
    ("states", "overall"),
    [
        ((S.WAITING, S.WAITING), S.WAITING),
        ((S.DONE, S.WAITING), S.WAITING),
        ((S.DONE, S.DONE), S.DONE),
        ((S.DONE, S.FAILED, S.STOPPED), S.DONE),
        ((S.STOPPED, S.STOPPED), S.DONE),
        ((S.DONE, S.STARTING, S.WAITING), S.RUNNING),
        ((S.DONE, S.QUEUED), S.RUNNING),
        ((S.RUNNING, S.RETRY), S.RUNNING),
        ((S.DONE, S.RETRY, S.WAITING), S.RETRY),
        ((S.DONE, S.PAUSED, S.WAITING), S.PAUSED),
        ((S.DONE, S.ERROR, S.RUNNING), S.ERROR),
        ((S.CRITICAL_ERROR, S.DONE), S.ERROR),
        ((S.RETRY, S.ERROR), S.ERROR),
    ],
)
def test_jobs_status_aggregation(states: tuple[JobStatus, ...], overall: JobStatus) -> None:
    assert jobs_status(jobs(*states)) is overall


def test_jobs_status_is_stored_with_every_transition() -> None:
    t = run(track_of(), JobEvent("load", E.CLAIM, cluster="local")).track
    assert (t.jobs_status, t.in_flight, t.active_clusters) == (S.RUNNING, True, ["local"])
    t = run(t, JobEvent("load", E.FINISHED, attempt=1)).track
    assert (t.jobs_status, t.in_flight, t.active_clusters) == (S.WAITING, True, [])


# --------------------------------------------------------------------------- ready_jobs


@pytest.mark.parametrize(
    ("pipeline", "changes", "ready"),
    [
        (HERB, {}, ["load"]),
        (HERB, {"load": S.RUNNING}, []),
        (HERB, {"load": S.RETRY}, []),
        (HERB, {"load": S.DONE}, ["barcode"]),
        (HERB, {"load": S.DONE, "barcode": S.STOPPED}, ["ocr"]),
        (PIOF, {"load": S.DONE}, ["barcode", "ocr"]),
        (PIOF, {"load": S.DONE, "barcode": S.DONE, "ocr": S.RUNNING}, []),
        (PIOF, {"load": S.DONE, "barcode": S.DONE, "ocr": S.STARTING}, []),
        (PIOF, {"load": S.DONE, "barcode": S.RETRY}, ["ocr"]),
        (PIOF, {"load": S.DONE, "barcode": S.RUNNING}, ["ocr"]),
        (PIOF, {"load": S.DONE, "barcode": S.DONE, "ocr": S.DONE}, ["derivatives"]),
        (PIOF, {"load": S.DONE, "barcode": S.ERROR}, []),
        (
            PIOF,
            {"load": S.DONE, "barcode": S.DONE, "ocr": S.DONE, "derivatives": S.FAILED},
            ["upload"],
        ),
        (
            PIOF,
            dict.fromkeys(("load", "barcode", "ocr", "derivatives", "upload", "clean_up"), S.DONE),
            [],
        ),
    ],
)
def test_ready_jobs_follow_priorities(
    pipeline: Pipeline, changes: dict[str, JobStatus], ready: list[str]
) -> None:
    track = with_jobs(track_of(pipeline), **{k: {"status": v} for k, v in changes.items()})
    assert ready_jobs(track, pipeline) == ready


def test_nothing_is_ready_on_a_paused_asset() -> None:
    track = track_of().model_copy(update={"available_for_services": Flag.PAUSED})
    assert ready_jobs(track, HERB) == []
    resumed = run(track, available_for_services=Flag.YES)
    assert resumed.track.ready == ["load"]
    paused = run(resumed.track, available_for_services=Flag.PAUSED)
    assert paused.track.ready == []


GATED = parse_pipeline(
    """
    name = "PIPEGATED"
    [[jobs]]
    name = "fetch"
    priority = 1
    requires = {is_in_ars = "YES", has_open_share = "YES"}
    [[jobs]]
    name = "note"
    priority = 1
    [[jobs]]
    name = "later"
    priority = 2
    """
)


def test_requires_flags_gate_readiness() -> None:
    track = Track.model_validate(
        {"_id": GUID, "pipeline": GATED.name, "job_list": GATED.initial_jobs()}
    )
    assert ready_jobs(track, GATED) == ["note"]
    half = run(track, pipeline=GATED, is_in_ars=Flag.YES)
    assert half.track.ready == ["note"]
    full = run(half.track, pipeline=GATED, has_open_share=Flag.YES)
    assert full.track.ready == ["fetch", "note"]
    # The flag change itself is recorded as an asset-level transition.
    assert [(h.job, h.from_, h.to) for h in full.history] == [(None, "NO", "YES")]
    # A gated job still holds back the next priority.
    note_done = with_jobs(track, note={"status": S.DONE})
    assert ready_jobs(note_done, GATED) == []


def test_ready_since_is_kept_while_the_ready_set_is_unchanged() -> None:
    t = run(track_of(), update_metadata=Flag.YES, now=NOW).track
    assert (t.ready, t.ready_since) == (["load"], NOW)
    t = run(t, hpc_ready=Flag.YES, now=NOW + timedelta(minutes=1)).track
    assert t.ready_since == NOW
    t = run(t, JobEvent("load", E.CLAIM), now=NOW + timedelta(minutes=2)).track
    assert (t.ready, t.ready_since) == ([], None)


# --------------------------------------------------------------------------- history


def test_every_transition_appends_one_history_entry() -> None:
    t = track_of()
    log = []
    steps = [
        ("dispatch", JobEvent("load", E.CLAIM, cluster="local")),
        ("dispatch", JobEvent("load", E.SUBMITTED, attempt=1, hpc_job_id="7")),
        ("callback", JobEvent("load", E.QUEUED, attempt=1, hpc_job_id="7")),  # no move
        ("callback", JobEvent("load", E.STARTED, attempt=1)),
        ("callback", JobEvent("load", E.FINISHED, attempt=1)),
    ]
    for cause, ev in steps:
        result = run(t, ev, cause=cause)
        t = result.track
        log.extend(result.history)
    assert [(h.job, h.attempt, h.from_, h.to, h.cause) for h in log] == [
        ("load", 1, "WAITING", "STARTING", "dispatch: claim"),
        ("load", 1, "STARTING", "QUEUED", "dispatch: submitted"),
        ("load", 1, "QUEUED", "RUNNING", "callback: started"),
        ("load", 1, "RUNNING", "DONE", "callback: finished"),
    ]
    assert t.job("load").hpc_job_id == "7"


def test_history_entries_serialise_with_the_domain_field_name() -> None:
    result = run(track_of(), JobEvent("load", E.CLAIM))
    dumped = result.history[0].model_dump(by_alias=True)
    assert dumped["from"] == "WAITING"
    assert dumped["to"] == "STARTING"


# --------------------------------------------------------------------------- RetryPolicy


def test_retry_delay_is_deterministic() -> None:
    a = RetryPolicy(backoff_s=30, backoff_max_s=3600)
    b = RetryPolicy(backoff_s=30, backoff_max_s=3600)
    for attempt in range(1, 6):
        assert a.delay(GUID, "load", attempt) == b.delay(GUID, "load", attempt)
        assert a.delay(GUID, "load", attempt) == a.delay(GUID, "load", attempt)


def test_retry_delay_grows_exponentially_with_bounded_jitter() -> None:
    policy = RetryPolicy(backoff_s=30, backoff_max_s=10_000)
    for attempt in range(1, 8):
        base = 30 * 2 ** (attempt - 1)
        delay = policy.delay(GUID, "ocr", attempt).total_seconds()
        assert base <= delay < base * 1.25


def test_retry_delay_spreads_a_batch() -> None:
    policy = RetryPolicy(backoff_s=30, backoff_max_s=3600)
    delays = {policy.delay(f"asset-{i}", "load", 1) for i in range(20)}
    assert len(delays) > 10


def test_retry_delay_stays_within_its_jitter_of_the_maximum() -> None:
    policy = RetryPolicy(backoff_s=30, backoff_max_s=600)
    for attempt in range(1, 40):
        assert policy.delay(GUID, "load", attempt) <= timedelta(seconds=600 * 1.25)
    assert policy.delay(GUID, "load", 39) >= timedelta(seconds=600)


def test_retry_delay_never_exceeds_the_configured_maximum() -> None:
    policy = RetryPolicy(backoff_s=30, backoff_max_s=600)
    for attempt in range(1, 40):
        assert policy.delay(GUID, "load", attempt) <= timedelta(seconds=600)


def test_zero_backoff_retries_at_once() -> None:
    assert RetryPolicy(backoff_s=0, backoff_max_s=0).delay(GUID, "load", 3) == timedelta(0)


# --------------------------------------------------------------------------- operator actions


def test_a_cancel_and_a_finished_callback_never_both_win() -> None:
    """Whichever is planned on the other's result: the job ends CANCELLED or DONE."""
    running = with_jobs(track_of(), load={"status": S.RUNNING, "attempt": 1, "cluster": "c"})
    cancel = JobEvent("load", E.OPERATOR_CANCEL)
    finished = JobEvent("load", E.FINISHED, attempt=1)
    cancelled_first = run(run(running, cancel).track, finished)
    assert cancelled_first.track.job("load").status is S.CANCELLED
    assert not cancelled_first.changed, "the late callback changes nothing"
    finished_first = run(run(running, finished).track, *[JobEvent(j.name, E.OPERATOR_CANCEL)
                                                         for j in running.job_list])
    assert finished_first.track.job("load").status is S.DONE
    assert {j.status for j in finished_first.track.job_list[1:]} == {S.CANCELLED}
    assert finished_first.track.jobs_status is S.CANCELLED


def test_a_cancelled_asset_is_cancelled_not_in_error_and_not_in_flight() -> None:
    t = with_jobs(track_of(), load={"status": S.DONE, "attempt": 1},
                  barcode={"status": S.RUNNING, "attempt": 1, "cluster": "c",
                           "hpc_job_id": "42"})
    result = plan(t, [JobEvent(j.name, E.OPERATOR_CANCEL) for j in t.job_list], pipeline=HERB,
                  now=NOW, cause="control: cancel", by="alice", reason="wrong scan")
    assert result.track.jobs_status is S.CANCELLED
    assert not result.track.in_flight and result.track.ready == []
    assert result.track.job("barcode").exit_state == "CANCELLED"
    entry = next(h for h in result.history if h.job == "barcode")
    assert (entry.by, entry.reason, entry.cluster, entry.hpc_job_id) == (
        "alice", "wrong scan", "c", "42")
    assert "status:CANCELLED" in result.track.queues


def test_a_paused_asset_is_never_claimed_even_from_a_copy_read_before_the_pause() -> None:
    ready = track_of()
    assert "load" in ready.model_copy(update=derive_fields(ready)).ready
    paused = ready.model_copy(update={"available_for_services": Flag.PAUSED})
    result = run(paused, JobEvent("load", E.CLAIM, cluster="local"))
    assert not result.changed and result.track.job("load").status is S.WAITING
    assert "PAUSED" in result.ignored[0]


def test_rerun_gives_a_job_fresh_attempts_and_keeps_counting() -> None:
    t = with_jobs(track_of(), ocr={"status": S.DONE, "attempt": 2, "max_attempts": 3})
    job = run(t, JobEvent("ocr", E.OPERATOR_RERUN)).track.job("ocr")
    assert job.status is S.WAITING
    assert job.attempt == 2, "the next attempt has a scheduler name of its own"
    assert job.max_attempts == 2 + HERB.spec("ocr").max_attempts


def derive_fields(track: Track) -> dict[str, object]:
    from dasscod.pipeline import derive

    return derive(track, pipeline=HERB, now=NOW)


def test_an_asset_level_step_names_the_flag_it_changed() -> None:
    result = plan(track_of(), [], pipeline=HERB, now=NOW, cause="control: pause",
                  asset_fields={"available_for_services": Flag.PAUSED}, by="alice")
    [entry] = result.history
    assert (entry.field, entry.from_, entry.to, entry.by) == (
        "available_for_services", "YES", "PAUSED", "alice")
    assert entry.to_document()["field"] == "available_for_services"
    assert "error" not in entry.to_document(), "empty optional fields are not stored"


def test_a_retry_planned_after_a_cancel_changes_nothing() -> None:
    failed = with_jobs(track_of(), load={"status": S.ERROR, "attempt": 3})
    cancelled = run(failed, *[JobEvent(j.name, E.OPERATOR_CANCEL) for j in failed.job_list])
    retry = run(cancelled.track, JobEvent("load", E.OPERATOR_RETRY))
    assert not retry.changed and "CANCELLED" in retry.ignored[0]
    assert retry.track.job("load").status is S.ERROR
