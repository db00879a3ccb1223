"""Pipelines as data, and the pure state machine that moves their jobs.

Nothing here does I/O. The store applies what `plan` returns as one guarded write; the
dispatcher, listener, watcher and housekeeping only ever describe *events*.

The legal job transitions are the table `TRANSITIONS`: an (event, current status) pair that is
not in it is a no-op that the caller logs. DONE, FAILED (accepted), ERROR, CRITICAL_ERROR and
STOPPED and CANCELLED are terminal for the attempt machinery: no callback moves a job out of
them (only an operator's explicit `retry`). Operator actions are events like any other, so a
cancel and a finishing job's callback are decided by the same guarded write: whichever is
written first wins, and the other finds its job in a state it does not leave.
"""

from __future__ import annotations

import tomllib
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dasscod.model import (
    NEVER_QUEUED,
    Flag,
    HistoryEntry,
    Job,
    JobStatus,
    Track,
    validation_problems,
)
from dasscod.queues import queue_tags

# --------------------------------------------------------------------------- pipeline data

#: Track fields holding a Flag: the only things a job may `require`.
TRACK_FLAGS = frozenset(
    name for name, info in Track.model_fields.items() if info.annotation in (Flag, "Flag")
)


class JobSpec(BaseModel):
    """One job of a pipeline, as written in its TOML file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    priority: int = Field(ge=1)
    module: str | None = None  # the dassco-hpc module; defaults to the job name
    #: `{python}` is the cluster's `python` setting: the runner needs nothing but the standard
    #: library, so any Python 3.11 on the cluster with `hpc/` on its path can run it.
    command: list[str] = Field(
        default_factory=lambda: ["{python}", "-m", "dassco_hpc", "run", "{module}"]
    )
    clusters: list[str] = Field(default_factory=lambda: ["local"], min_length=1)
    time_limit_s: int = Field(default=3600, ge=1)
    cpus: int = Field(default=1, ge=1)
    memory_mb: int = Field(default=1024, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    #: Failure after the last attempt is accepted (job FAILED, pipeline goes on) instead of
    #: stopping the asset in ERROR.
    allow_failure: bool = False
    #: Track flags that must hold before the job may start, e.g. {is_in_ars = "YES"}.
    requires: dict[str, Flag] = Field(default_factory=dict)

    @field_validator("requires")
    @classmethod
    def _known_flags(cls, requires: dict[str, Flag]) -> dict[str, Flag]:
        unknown = sorted(set(requires) - TRACK_FLAGS)
        if unknown:
            raise ValueError(
                f"unknown track flag(s) {', '.join(unknown)}; "
                f"known flags: {', '.join(sorted(TRACK_FLAGS))}"
            )
        return requires

    @property
    def module_name(self) -> str:
        return self.module or self.name


class Pipeline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    description: str = ""
    jobs: list[JobSpec] = Field(min_length=1)

    @field_validator("jobs")
    @classmethod
    def _unique_names(cls, jobs: list[JobSpec]) -> list[JobSpec]:
        names = [j.name for j in jobs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"job names must be unique, repeated: {', '.join(duplicates)}")
        return sorted(jobs, key=lambda j: j.priority)

    def spec(self, job: str) -> JobSpec:
        for spec in self.jobs:
            if spec.name == job:
                return spec
        raise KeyError(f"pipeline {self.name} has no job {job!r}")

    def initial_jobs(self) -> list[Job]:
        return [
            Job(name=s.name, priority=s.priority, max_attempts=s.max_attempts) for s in self.jobs
        ]


def pipeline_stages(pipelines: Iterable[Pipeline]) -> dict[str, int]:
    """Each job's stage: how many distinct priorities come before it in its pipeline (jobs
    that run in parallel share a stage). A job in several pipelines takes its earliest."""
    stages: dict[str, int] = {}
    for pipeline in pipelines:
        priorities = sorted({spec.priority for spec in pipeline.jobs})
        for spec in pipeline.jobs:
            stage = priorities.index(spec.priority)
            stages[spec.name] = min(stage, stages.get(spec.name, stage))
    return stages


class PipelineError(ValueError):
    """A pipeline file is missing or invalid; the message names the file and the field."""


def parse_pipeline(text: str, *, source: str = "<string>") -> Pipeline:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return Pipeline.model_validate(data)
    except ValidationError as exc:
        raise PipelineError(f"{source}: {validation_problems(exc)}") from exc


# --------------------------------------------------------------------------- events


class Event(StrEnum):
    CLAIM = "claim"  # dispatcher takes a ready job
    SUBMITTED = "submitted"  # the scheduler accepted it and gave a job id
    SUBMIT_FAILED = "submit_failed"
    QUEUED = "queued"  # HPC callback
    STARTED = "started"  # HPC callback
    FINISHED = "finished"  # HPC callback
    FAILED = "failed"  # HPC callback
    LOST = "lost"  # watcher: the job left the scheduler without a final callback
    TIMED_OUT = "timed_out"  # the watcher: running past its limit, or queued too long
    RETRY_DUE = "retry_due"  # housekeeping: a RETRY job's not-before time has passed
    CANCEL = "cancel"  # e.g. a device target: the rest of the pipeline is not needed
    UNSUBMITTED = "unsubmitted"  # reconcile after a crash: the claim never reached the scheduler
    OPERATOR_RETRY = "operator_retry"  # `dasscod retry`: an ERROR job gets fresh attempts
    LEASE = "lease"  # a pull cluster's agent takes a claimed job to submit it (until lease_until)
    OPERATOR_CANCEL = "operator_cancel"  # `dasscod cancel`: every unfinished job is CANCELLED
    OPERATOR_RERUN = "operator_rerun"  # `dasscod retry --from`: a settled job runs again
    REFUSED = "refused"  # dispatch: the job cannot run here at all (its pipeline is unknown)


S = JobStatus
ACTIVE = frozenset({S.STARTING, S.QUEUED, S.RUNNING})
TERMINAL = frozenset({S.DONE, S.FAILED, S.ERROR, S.CRITICAL_ERROR, S.STOPPED, S.CANCELLED})
#: Jobs an operator's cancel stops: everything that has not ended.
CANCELLABLE = frozenset({S.WAITING, S.STARTING, S.QUEUED, S.RUNNING, S.RETRY, S.PAUSED})
#: Jobs an operator may retry one by one: those that failed for good.
RETRYABLE = frozenset({S.ERROR, S.CRITICAL_ERROR, S.FAILED})
#: Statuses that let the next priority go ahead.
SETTLED = frozenset({S.DONE, S.FAILED, S.STOPPED})

#: A failure outcome: RETRY while attempts remain and retrying can help, else ERROR (or FAILED
#: when the job allows failure). Resolved by `_failure_target`.
RETRY_OR_GIVE_UP = "retry-or-give-up"

#: The one table of legal transitions: event -> {from status: to status}.
TRANSITIONS: dict[Event, dict[JobStatus, JobStatus | str]] = {
    Event.CLAIM: {S.WAITING: S.STARTING},
    Event.SUBMITTED: {S.STARTING: S.QUEUED, S.QUEUED: S.QUEUED, S.RUNNING: S.RUNNING},
    Event.SUBMIT_FAILED: {S.STARTING: RETRY_OR_GIVE_UP},
    Event.QUEUED: {S.STARTING: S.QUEUED, S.QUEUED: S.QUEUED},
    Event.STARTED: {S.STARTING: S.RUNNING, S.QUEUED: S.RUNNING},
    Event.FINISHED: {S.STARTING: S.DONE, S.QUEUED: S.DONE, S.RUNNING: S.DONE},
    Event.FAILED: {s: RETRY_OR_GIVE_UP for s in ACTIVE},
    Event.LOST: {s: RETRY_OR_GIVE_UP for s in ACTIVE},
    Event.TIMED_OUT: {s: RETRY_OR_GIVE_UP for s in ACTIVE},
    Event.RETRY_DUE: {S.RETRY: S.WAITING},
    Event.CANCEL: {S.WAITING: S.STOPPED, S.RETRY: S.STOPPED},
    Event.UNSUBMITTED: {S.STARTING: S.WAITING},
    Event.OPERATOR_RETRY: {S.ERROR: S.WAITING, S.CRITICAL_ERROR: S.WAITING, S.FAILED: S.WAITING},
    Event.LEASE: {S.STARTING: S.STARTING},
    Event.OPERATOR_CANCEL: {s: S.CANCELLED for s in CANCELLABLE},
    Event.REFUSED: {S.WAITING: S.ERROR, S.RETRY: S.ERROR},
    # Not from an active status: an asset is re-run from a job only when nothing of it runs.
    Event.OPERATOR_RERUN: {
        s: S.WAITING for s in (S.DONE, S.FAILED, S.ERROR, S.CRITICAL_ERROR, S.STOPPED,
                               S.CANCELLED, S.RETRY)
    },
}

#: Events that carry an attempt number must match the job's current attempt; an older attempt's
#: callback is stale and ignored (its job was already retried).
ATTEMPT_BOUND = frozenset(
    {
        Event.SUBMITTED,
        Event.SUBMIT_FAILED,
        Event.QUEUED,
        Event.STARTED,
        Event.FINISHED,
        Event.FAILED,
        Event.LOST,
        Event.TIMED_OUT,
        Event.UNSUBMITTED,
        Event.LEASE,
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    backoff_s: float = 30.0
    backoff_max_s: float = 3600.0

    def delay(self, asset_guid: str, job: str, attempt: int) -> timedelta:
        """Exponential backoff with a deterministic jitter of up to +25 %, spread by asset so
        a batch that failed together does not come back together."""
        base = self.backoff_s * 2 ** max(0, min(attempt - 1, 60))
        spread = (zlib.crc32(f"{asset_guid}/{job}/{attempt}".encode()) % 1000) / 4000
        return timedelta(seconds=min(self.backoff_max_s, base * (1 + spread)))


@dataclass(frozen=True)
class JobEvent:
    """Something that happened to one job."""

    job: str
    event: Event
    attempt: int | None = None
    hpc_job_id: str | None = None
    cluster: str | None = None
    at: datetime | None = None  # when it happened (HPC clock for callbacks); defaults to now
    error: str | None = None
    exit_state: str | None = None
    retryable: bool = True
    run_time_s: float | None = None
    lease_until: datetime | None = None  # LEASE: until when the agent holds the job


@dataclass
class Plan:
    """The outcome of applying events to a track document: the fields to `$set` (dotted paths,
    array elements by index), the history entries to `$push`, and what was ignored and why."""

    track: Track
    set_fields: dict[str, Any] = field(default_factory=dict)
    history: list[HistoryEntry] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.set_fields)


def plan(
    track: Track,
    events: Iterable[JobEvent],
    *,
    pipeline: Pipeline | None,
    now: datetime,
    cause: str,
    asset_fields: Mapping[str, Any] | None = None,
    policy: RetryPolicy = RetryPolicy(),
    by: str | None = None,
    reason: str | None = None,
) -> Plan:
    """Apply job events (and optional asset-level field changes) to a copy of `track`.

    Returns the new document and the minimal `$set` that turns the stored document into it.
    The caller writes it with a guard on `track.version`. `by` and `reason` (an operator's
    action) are recorded in every history entry the plan makes.
    """
    # Only the jobs are changed in place; lists such as history and file_list are replaced,
    # never mutated, so a shallow copy of the document is safe and keeps this cheap.
    new = track.model_copy(update={"job_list": [j.model_copy() for j in track.job_list]})
    result = Plan(track=new)
    fields = dict(asset_fields or {})
    if fields.get("update_metadata") == Flag.YES and "metadata_seq" not in fields:
        # Every request for a metadata push counts, even when the flag is already YES: the
        # ARS sync clears the flag only if the sequence is still the one it pushed.
        fields["metadata_seq"] = track.metadata_seq + 1
    for name, value in fields.items():
        if getattr(new, name) != value:
            history_from = getattr(new, name)
            setattr(new, name, value)
            result.set_fields[name] = value
            if isinstance(value, Flag | JobStatus):
                result.history.append(
                    HistoryEntry(at=now, job=None, from_=str(history_from), to=value,
                                 cause=cause, field=name)
                )
    for ev in events:
        _apply_job_event(
            new, ev, pipeline=pipeline, now=now, cause=cause, policy=policy, out=result
        )
    if by is not None or reason is not None:
        for entry in result.history:
            entry.by, entry.reason = by, reason
    if result.set_fields:
        for name, value in derive(new, pipeline=pipeline, now=now).items():
            if getattr(new, name) != value:
                setattr(new, name, value)
                result.set_fields[name] = value
    return result


def _apply_job_event(
    track: Track,
    ev: JobEvent,
    *,
    pipeline: Pipeline | None,
    now: datetime,
    cause: str,
    policy: RetryPolicy,
    out: Plan,
) -> None:
    try:
        index = next(i for i, j in enumerate(track.job_list) if j.name == ev.job)
    except StopIteration:
        out.ignored.append(f"{ev.event}: asset has no job {ev.job!r}")
        return
    job = track.job_list[index]
    if ev.event in ATTEMPT_BOUND and ev.attempt is not None and ev.attempt != job.attempt:
        out.ignored.append(
            f"{ev.event}: stale attempt {ev.attempt} of {ev.job} (current attempt {job.attempt})"
        )
        return
    if ev.event is Event.LEASE and (reason := _lease_refused(job, now)):
        out.ignored.append(f"{ev.event}: {ev.job} {reason}")
        return
    if ev.event is Event.OPERATOR_RETRY and any(j.status is S.CANCELLED for j in track.job_list):
        # A cancel written first wins: one job retried alone would never run (the asset is
        # CANCELLED); `retry --from` (OPERATOR_RERUN) is how a cancelled asset runs again.
        out.ignored.append(f"{ev.event}: the asset is CANCELLED, {ev.job} is not retried")
        return
    if ev.event is Event.CLAIM and track.available_for_services is not Flag.YES:
        # Decided here rather than by the caller's copy of `ready`: a pause written after
        # the dispatcher read the asset still stops the claim (the guard re-plans on it).
        out.ignored.append(f"{ev.event}: asset is {track.available_for_services}, not claimed")
        return
    target = TRANSITIONS[ev.event].get(job.status)
    if target is None:
        out.ignored.append(f"{ev.event}: {ev.job} is {job.status}, not a state it leaves")
        return
    at = ev.at or now
    updated = job.model_copy()
    if target == RETRY_OR_GIVE_UP:
        spec = pipeline.spec(job.name) if pipeline and _has(pipeline, job.name) else None
        updated.status = _failure_target(job, ev, allow_failure=bool(spec and spec.allow_failure))
        updated.last_error = ev.error or str(ev.event)
        updated.exit_state = ev.exit_state
        updated.job_end_time = at
        if updated.status is S.RETRY:
            updated.not_before = now + policy.delay(track.id, job.name, job.attempt)
    else:
        assert isinstance(target, JobStatus)
        updated.status = target
    match ev.event:
        case Event.CLAIM:
            updated.attempt = job.attempt + 1
            updated.cluster = ev.cluster
            updated.hpc_job_id = NEVER_QUEUED
            updated.job_claimed_time = at
            updated.job_queued_time = updated.job_start_time = updated.job_end_time = None
            updated.not_before = None
            updated.exit_state = None
            updated.run_time_s = None
            updated.lease_until = None
        case Event.LEASE:
            updated.lease_until = ev.lease_until
        case Event.SUBMITTED | Event.QUEUED:
            if ev.event is Event.SUBMITTED:
                updated.lease_until = None
            if ev.hpc_job_id is not None:
                updated.hpc_job_id = ev.hpc_job_id
            if job.job_queued_time is None:
                updated.job_queued_time = at
        case Event.STARTED:
            updated.job_start_time = at
            if ev.hpc_job_id is not None and not job.has_scheduler_id:
                updated.hpc_job_id = ev.hpc_job_id
        case Event.FINISHED:
            updated.job_end_time = at
            updated.exit_state = ev.exit_state or "COMPLETED"
            updated.run_time_s = ev.run_time_s
            updated.last_error = None
        case Event.FAILED:
            updated.run_time_s = ev.run_time_s
        case Event.UNSUBMITTED:
            # The attempt never reached the scheduler: give its number back.
            updated.attempt = job.attempt - 1
            updated.lease_until = None
        case Event.OPERATOR_RETRY | Event.OPERATOR_RERUN:
            # Attempts keep counting up (each has its own scheduler name); the job gets its
            # pipeline's number of attempts again.
            updated.max_attempts = job.attempt + (
                pipeline.spec(job.name).max_attempts if pipeline and _has(pipeline, job.name) else 1
            )
            updated.not_before = None
        case Event.REFUSED:
            updated.last_error = ev.error or str(ev.event)
            updated.not_before = None
        case Event.OPERATOR_CANCEL:
            updated.not_before = None
            updated.lease_until = None
            if job.status in ACTIVE:
                updated.job_end_time = at
                updated.exit_state = "CANCELLED"
        case _:
            pass
    if updated == job:
        out.ignored.append(f"{ev.event}: {ev.job} already {job.status}, nothing to change")
        return
    for key, value in updated.model_dump().items():
        if getattr(job, key) != value:
            out.set_fields[f"job_list.{index}.{key}"] = getattr(updated, key)
    track.job_list[index] = updated
    if updated.status != job.status:
        out.history.append(
            HistoryEntry(
                at=now,
                job=job.name,
                attempt=updated.attempt,
                from_=job.status,
                to=updated.status,
                cause=f"{cause}: {ev.event}" + (f" ({ev.error})" if ev.error else ""),
                cluster=updated.cluster,
                hpc_job_id=str(updated.hpc_job_id) if updated.has_scheduler_id else None,
                error=updated.last_error if target == RETRY_OR_GIVE_UP else None,
            )
        )


def _lease_refused(job: Job, now: datetime) -> str | None:
    """Why a job cannot be leased to a pull agent now (None: it can)."""
    if job.has_scheduler_id:
        return f"already has scheduler job {job.hpc_job_id}"
    if job.lease_until is not None and job.lease_until > now:
        return f"is leased until {job.lease_until.isoformat()}"
    return None


def _has(pipeline: Pipeline, job: str) -> bool:
    return any(s.name == job for s in pipeline.jobs)


def _failure_target(job: Job, ev: JobEvent, *, allow_failure: bool) -> JobStatus:
    if ev.retryable and job.attempt < job.max_attempts:
        return S.RETRY
    return S.FAILED if allow_failure else S.ERROR


# --------------------------------------------------------------------------- derived state


def jobs_status(jobs: Iterable[Job]) -> JobStatus:
    """The asset's overall status (docs/domain.md): CANCELLED (an operator's decision) wins, then
    ERROR, then DONE when every job settled, RUNNING while any is active, RETRY while any waits
    for a retry, else WAITING."""
    statuses = [j.status for j in jobs]
    if S.CANCELLED in statuses:
        return S.CANCELLED
    if any(s in (S.ERROR, S.CRITICAL_ERROR) for s in statuses):
        return S.ERROR
    if all(s in SETTLED for s in statuses):
        return S.DONE
    if any(s in ACTIVE for s in statuses):
        return S.RUNNING
    if any(s is S.RETRY for s in statuses):
        return S.RETRY
    if any(s is S.PAUSED for s in statuses):
        return S.PAUSED
    return S.WAITING


def ready_jobs(track: Track, pipeline: Pipeline | None) -> list[str]:
    """Jobs the dispatcher may claim now: WAITING jobs of the lowest unsettled priority whose
    required flags hold, on an asset that is neither paused nor in ERROR."""
    if track.available_for_services is not Flag.YES:
        return []
    if jobs_status(track.job_list) in (S.ERROR, S.DONE, S.CANCELLED):
        return []
    unsettled = [j for j in track.job_list if j.status not in SETTLED]
    if not unsettled:
        return []
    lowest = min(j.priority for j in unsettled)
    ready = []
    for job in unsettled:
        if job.priority != lowest or job.status is not S.WAITING:
            continue
        if pipeline is not None and _has(pipeline, job.name):
            requires = pipeline.spec(job.name).requires
            if any(getattr(track, flag, None) != value for flag, value in requires.items()):
                continue
        ready.append(job.name)
    return ready


def derive(track: Track, *, pipeline: Pipeline | None, now: datetime) -> dict[str, Any]:
    """The denormalised fields the daemon's queries use, recomputed from `job_list` (and, for
    the `queues` tags, the asset's flags)."""
    ready = ready_jobs(track, pipeline)
    retry_times = [j.not_before for j in track.job_list if j.status is S.RETRY and j.not_before]
    overall = jobs_status(track.job_list)
    started = any(j.attempt > 0 for j in track.job_list)
    in_flight = started and overall not in (S.DONE, S.ERROR, S.CANCELLED)
    active = sorted({j.cluster for j in track.job_list if j.status in ACTIVE and j.cluster})
    return {
        "jobs_status": overall,
        "ready": ready,
        "ready_since": _ready_since(track, ready, now),
        "retry_due": min(retry_times) if retry_times else None,
        "in_flight": in_flight,
        "active_clusters": active,
        "queues": queue_tags(track, in_flight=in_flight, active_clusters=active,
                             status=overall, at=current_jobs(track.job_list)),
    }


def current_jobs(jobs: Iterable[Job]) -> list[str]:
    """Where the asset is in its pipeline: the jobs of the lowest priority that has not
    settled (running, waiting, failed or cancelled); none once every job settled."""
    unsettled = [j for j in jobs if j.status not in SETTLED]
    if not unsettled:
        return []
    lowest = min(j.priority for j in unsettled)
    return [j.name for j in unsettled if j.priority == lowest]


def _ready_since(track: Track, ready: list[str], now: datetime) -> datetime | None:
    """When the current ready set became ready: the dispatcher serves assets oldest first."""
    if not ready:
        return None
    if ready == track.ready and track.ready_since is not None:
        return track.ready_since
    return now


def new_track_fields(track: Track, pipeline: Pipeline | None, now: datetime) -> Track:
    """A freshly created track document with its derived fields filled in."""
    return track.model_copy(update=derive(track, pipeline=pipeline, now=now))
