"""What a job that left its scheduler without a final callback means: one rule for the
watcher (which asks the scheduler itself) and for a pull cluster's agent (which reports what
its scheduler said)."""

from __future__ import annotations

from typing import Protocol

from dasscod.cluster.base import SchedulerState
from dasscod.model import Job
from dasscod.pipeline import Event, JobEvent


class Observation(Protocol):
    """What a scheduler says about one job (`JobInfo`, or an agent's `ObservedJob`)."""

    @property
    def state(self) -> SchedulerState: ...

    @property
    def exit_code(self) -> int | None: ...

    @property
    def reason(self) -> str | None: ...


def has_ended(state: SchedulerState) -> bool:
    """The job is no longer in the scheduler's hands: it finished, or the scheduler no longer
    knows it. A live attempt in this state will send no callback any more."""
    return state.finished or state is SchedulerState.UNKNOWN


def lost(job: Job, seen: Observation) -> JobEvent:
    """The attempt ended without its final callback (LOST: the retry policy applies; a late
    callback is ignored by the store's guard)."""
    exit_text = f", exit code {seen.exit_code}" if seen.exit_code is not None else ""
    return JobEvent(
        job.name,
        Event.LOST,
        attempt=job.attempt,
        error=f"job ended ({seen.state}{exit_text}) without reporting back"
        + (f": {seen.reason}" if seen.reason else ""),
        exit_state=str(seen.state),
    )


def adopted(job: Job, hpc_job_id: str, seen: Observation) -> list[JobEvent]:
    """A claimed attempt whose submission outcome was unknown, found at the scheduler under
    its deterministic name: record its job id, and its loss if it has ended already."""
    events = [JobEvent(job.name, Event.SUBMITTED, attempt=job.attempt, hpc_job_id=hpc_job_id)]
    if has_ended(seen.state):
        events.append(lost(job, seen))
    return events
