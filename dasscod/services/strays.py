"""Stray jobs: a job of ours on a cluster that no live attempt accounts for.

One rule for both kinds of cluster: the job watcher applies it to the jobs it lists on a
cluster it reaches (their scripts are in its `state_dir`), the pull agent's report to the jobs
the agent submitted (their scripts are in its `--state-dir`). Jobs named like ours but
submitted elsewhere are never judged: neither side lists them.

A job the rule names is cancelled; one whose attempt has just ended (or moved on) while the
job runs is given `timing.grace_s` first, since such a job usually leaves by itself. A job
still pending in the queue, a second job for an attempt and the job of an asset we do not
track are cancelled at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from dasscod.cluster.base import SchedulerState
from dasscod.model import JobStatus, Track
from dasscod.services.launch import AttemptKey

#: An attempt in these states may have a job on the cluster.
LIVE = (JobStatus.STARTING, JobStatus.QUEUED, JobStatus.RUNNING)


def same_job(recorded: str, listed: str) -> bool:
    """Torque may print `123.server` where qsub said `123`: the number decides."""
    return recorded == listed or recorded.split(".", 1)[0] == listed.split(".", 1)[0]


def unaccounted(track: Track | None, key: AttemptKey, cluster: str, job_id: str,
                state: SchedulerState) -> tuple[str | None, bool]:
    """Why the scheduler job `job_id` on `cluster`, named after attempt `key`, is not the live
    job of that attempt, and whether to cancel it at once; (None, False) when it is."""
    guid, name, attempt = key
    pending = state is SchedulerState.PENDING
    if track is None:
        return f"asset {guid} is not tracked by this daemon", True
    job = next((j for j in track.job_list if j.name == name), None)
    if job is None:
        return f"asset {guid} has no job {name}", True
    if job.cluster != cluster and job.status in LIVE:
        return f"the live attempt runs on cluster {job.cluster}", True
    if job.attempt != attempt:
        return f"attempt {attempt} is not the live attempt ({job.attempt})", pending
    if job.has_scheduler_id and not same_job(str(job.hpc_job_id), job_id):
        return f"a second job for the attempt (its job is {job.hpc_job_id})", True
    if job.status not in LIVE:
        return f"the attempt is {job.status}", pending
    return None, False


@dataclass
class StrayClock:
    """When each stray job was first seen (monotonic), and whether its cancellation was
    logged: the grace period, and one warning per job however often it is seen."""

    grace_s: float
    _seen: dict[str, tuple[float, bool]] = field(default_factory=dict)

    def forget_all_but(self, job_ids: set[str]) -> None:
        """Jobs no longer listed are gone: forget them."""
        for job_id in [j for j in self._seen if j not in job_ids]:
            del self._seen[job_id]

    def accounted(self, job_id: str) -> None:
        self._seen.pop(job_id, None)

    def due(self, job_id: str, *, at_once: bool, now: float | None = None) -> bool:
        """Whether to cancel the stray job now (at once, or its grace is over)."""
        now = time.monotonic() if now is None else now
        first, _ = self._seen.setdefault(job_id, (now, False))
        return at_once or now - first >= self.grace_s

    def first_warning(self, job_id: str) -> bool:
        """True the first time a job's cancellation is to be logged."""
        first, logged = self._seen.get(job_id, (time.monotonic(), False))
        self._seen[job_id] = (first, True)
        return not logged
