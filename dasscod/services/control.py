"""Operators' actions: pause and resume, drain, cancel, retry, ARS retry, limits -- each one
audited.

Every action on an asset is an event of the state machine written by the same guarded
(compare-and-set) transition as everything else the daemon does, with the operator's name
and reason in the asset's history; so a cancel and a finishing job cannot both win, and an
action is safe with a standby daemon present. Holds on pipelines, clusters and intake live in
the `control` collection and in memory (`dasscod.holds`), written here before the answer goes
out, so they are in force before the next claim. Every action, whatever it touched, is also
an `audit` record.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel

from dasscod.cluster.base import SchedulerError, TransportError
from dasscod.cluster.configured import Cluster
from dasscod.coordination import Throttle
from dasscod.holds import (
    ASSETS_IN_FLIGHT,
    DRAIN,
    INTAKE,
    LIMIT,
    PAUSE,
    Hold,
    Holds,
    cluster_target,
    pipeline_target,
)
from dasscod.log import get_logger
from dasscod.model import Flag, JobStatus, Track, utcnow
from dasscod.pipeline import ACTIVE, RETRYABLE, SETTLED, Event, JobEvent, Pipeline
from dasscod.queues import ArsFlag
from dasscod.services.ars_retry import ARS_FLAGS, flags_in_error, plan_reset
from dasscod.services.launch import Launcher, scheduler_job_name
from dasscod.settings import Settings
from dasscod.store import Stores

log = get_logger(__name__)

S = JobStatus
PAUSABLE = ("asset", "pipeline", "cluster", "intake")


class ControlError(Exception):
    """An action refused; `status` is the HTTP status that says why (404, 409, 422)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class ActionResult(BaseModel):
    """What an action did. `changed` is False when there was nothing to do (already
    paused, ...); the action is audited either way."""

    action: str
    target: str
    changed: bool
    detail: str
    by: str
    at: datetime
    #: Cancel: what was done on the schedulers, one line per live job.
    scheduler: list[str] = []


@dataclass(frozen=True)
class ConfiguredLimits:
    assets_in_flight: int
    jobs_per_cluster: Mapping[str, int]

    @classmethod
    def of(cls, settings: Settings) -> ConfiguredLimits:
        """The limits the configuration sets (operators' limits override them)."""
        return cls(
            assets_in_flight=settings.throttle.assets_in_flight,
            jobs_per_cluster={n: c.max_jobs for n, c in settings.clusters.items()},
        )


class ControlService:
    def __init__(
        self,
        *,
        stores: Stores,
        holds: Holds,
        throttle: Throttle,
        clusters: Mapping[str, Cluster],
        pipelines: Mapping[str, Pipeline],
        configured: ConfiguredLimits,
        launcher: Launcher | None = None,
        released: Callable[[], None] = lambda: None,
    ) -> None:
        self.stores = stores
        self.holds = holds
        self.throttle = throttle
        self.clusters = clusters
        self.pipelines = pipelines
        self.configured = configured
        self.launcher = launcher
        #: Called when a hold was lifted or a limit raised: the dispatchers look again.
        self.released = released

    # ------------------------------------------------------------------ holds

    async def reload(self) -> None:
        """Take the holds from the store (start-up, and every housekeeping pass: a hold
        written by another daemon of this database is followed within one pass)."""
        changed = self.holds.replace(await self.stores.control.holds())
        self._apply_limits()
        if changed:
            self.released()

    async def pause(self, kind: str, name: str | None, *, by: str,
                    reason: str | None) -> ActionResult:
        if kind == "asset":
            return await self._pause_asset(self._name(kind, name), by=by, reason=reason)
        target = self._hold_target(kind, name)
        hold = Hold(PAUSE, target, by=by, at=utcnow(), reason=reason)
        changed = await self.stores.control.put(hold)
        if changed:
            self.holds.put(hold)
        detail = "paused" if changed else "was already paused"
        if kind == "cluster":
            detail += "; its running jobs finish, no new job is submitted there"
        return await self._audit(f"pause {kind}", target, changed, detail, by, reason)

    async def resume(self, kind: str, name: str | None, *, by: str,
                     reason: str | None) -> ActionResult:
        if kind == "asset":
            return await self._resume_asset(self._name(kind, name), by=by, reason=reason)
        target = self._hold_target(kind, name)
        changed = await self.stores.control.remove(PAUSE, target)
        self.holds.remove(PAUSE, target)
        if changed:
            self.released()
        detail = "resumed" if changed else "was not paused"
        return await self._audit(f"resume {kind}", target, changed, detail, by, reason)

    async def drain(self, on: bool, *, by: str, reason: str | None) -> ActionResult:
        """On: intake takes nothing and no asset enters the HPC side; the assets in flight
        run to their end. Off: back to normal."""
        if on:
            hold = Hold(DRAIN, DRAIN, by=by, at=utcnow(), reason=reason)
            changed = await self.stores.control.put(hold)
            if changed:
                self.holds.put(hold)
            in_flight = self.throttle.assets_in_flight()
            detail = (f"draining: no new work is taken; {in_flight} asset(s) in flight run to "
                      "their end" if changed else "already draining")
        else:
            changed = await self.stores.control.remove(DRAIN, DRAIN)
            self.holds.remove(DRAIN, DRAIN)
            if changed:
                self.released()
            detail = "drain ended: new work is taken again" if changed else "was not draining"
        return await self._audit("drain" if on else "end drain", DRAIN, changed, detail, by,
                                 reason)

    async def set_limit(self, target: str, value: int | None, *, by: str,
                        reason: str | None) -> ActionResult:
        """`target`: "assets_in_flight" or "cluster:NAME"; `value` None goes back to the
        configured limit."""
        configured = self._configured_limit(target)
        if value is None:
            changed = await self.stores.control.remove(LIMIT, target)
            self.holds.remove(LIMIT, target)
            detail = f"back to its configured limit {configured}"
        else:
            if value < 1:
                raise ControlError(422, f"{target}: a limit must be at least 1, not {value}")
            hold = Hold(LIMIT, target, by=by, at=utcnow(), reason=reason, value=value)
            changed = await self.stores.control.put(hold)
            self.holds.put(hold)
            detail = f"limit {value} (configured: {configured})"
        self._apply_limits()
        if changed:
            self.released()
        return await self._audit("limit", target, changed, detail, by, reason)

    def _configured_limit(self, target: str) -> int:
        if target == ASSETS_IN_FLIGHT:
            return self.configured.assets_in_flight
        cluster = target.removeprefix("cluster:")
        if target.startswith("cluster:") and cluster in self.configured.jobs_per_cluster:
            return self.configured.jobs_per_cluster[cluster]
        raise ControlError(404, f"no limit {target}: limits are {ASSETS_IN_FLIGHT} and "
                           + ", ".join(cluster_target(c) for c in self.configured.jobs_per_cluster))

    def reconfigure(self, configured: ConfiguredLimits) -> None:
        """New configured limits (SIGHUP): operators' limits still take precedence."""
        self.configured = configured
        self._apply_limits()
        self.released()

    def _apply_limits(self) -> None:
        self.throttle.set_limits(
            assets_in_flight=self.holds.limit(ASSETS_IN_FLIGHT) or self.configured.assets_in_flight,
            jobs_per_cluster={
                name: self.holds.limit(cluster_target(name)) or configured
                for name, configured in self.configured.jobs_per_cluster.items()
            },
        )

    def _name(self, kind: str, name: str | None) -> str:
        if not name:
            raise ControlError(422, f"name the {kind} to act on")
        return name

    def _known(self, kind: str, name: str | None, known: Collection[str]) -> str:
        """`name`, one of the `known` pipelines or clusters (404 naming those there are)."""
        name = self._name(kind, name)
        if name not in known:
            raise ControlError(404, f"no {kind} {name}; {kind}s: " + ", ".join(sorted(known)))
        return name

    def _hold_target(self, kind: str, name: str | None) -> str:
        if kind == "intake":
            return INTAKE
        if kind == "pipeline":
            return pipeline_target(self._known(kind, name, self.pipelines))
        if kind == "cluster":
            return cluster_target(self._known(kind, name, self.clusters))
        raise ControlError(422, f"cannot pause a {kind!r}: pause one of {', '.join(PAUSABLE)}")

    # ------------------------------------------------------------------ one asset

    async def _asset(self, guid: str) -> Track:
        track = await self.stores.track.get(guid)
        if track is None:
            raise ControlError(404, f"no asset {guid}: check the guid (`dasscod ls` lists "
                               "assets)")
        return track

    async def _pause_asset(self, guid: str, *, by: str, reason: str | None) -> ActionResult:
        track = await self._asset(guid)
        if track.jobs_status in (S.DONE, S.CANCELLED):
            raise ControlError(409, f"asset {guid} is {track.jobs_status}: nothing to pause")
        if (track.available_for_services is Flag.PAUSED
                and track.available_for_services_wait_time is None):
            return await self._audit("pause asset", f"asset:{guid}", False, "was already paused",
                                     by, reason)
        result = await self.stores.track.set_fields(
            guid,
            {"available_for_services": Flag.PAUSED,
             "available_for_services_timestamp": utcnow(),
             # No wait time: an operator's pause lasts until an operator resumes it.
             "available_for_services_wait_time": None},
            cause="control: pause", by=by, reason=reason,
        )  # fmt: skip
        detail = ("paused: running jobs finish, no new job starts" if result.applied
                  else "was already paused")
        return await self._audit("pause asset", f"asset:{guid}", result.applied, detail, by,
                                 reason)

    async def _resume_asset(self, guid: str, *, by: str, reason: str | None) -> ActionResult:
        await self._asset(guid)
        result = await self.stores.track.set_fields(
            guid,
            {"available_for_services": Flag.YES, "available_for_services_timestamp": None,
             "available_for_services_wait_time": None},
            cause="control: resume", by=by, reason=reason,
        )  # fmt: skip
        detail = "resumed" if result.applied else "was not paused"
        return await self._audit("resume asset", f"asset:{guid}", result.applied, detail, by,
                                 reason)

    async def cancel(self, guid: str, *, by: str, reason: str | None) -> ActionResult:
        """Every unfinished job of the asset becomes CANCELLED in one guarded write; then the
        jobs that were live in that write are cancelled on their schedulers. A job whose
        end was written first stays DONE (or whatever it ended as)."""
        track = await self._asset(guid)
        if track.jobs_status in (S.DONE, S.CANCELLED):
            raise ControlError(409, f"asset {guid} is {track.jobs_status}: nothing to cancel")
        now = utcnow()
        result = await self.stores.track.apply(
            guid, [JobEvent(j.name, Event.OPERATOR_CANCEL) for j in track.job_list],
            cause="control: cancel", now=now, by=by, reason=reason,
        )  # fmt: skip
        if not result.applied:
            raise ControlError(409, f"asset {guid} has no unfinished job left to cancel "
                               f"(it is {result.track.jobs_status})")
        lines = [await self._stop(guid, entry.job, entry.attempt or 0, entry.cluster,
                                  entry.hpc_job_id)
                 for entry in result.track.history
                 if entry.at == now and entry.to == S.CANCELLED and entry.job is not None
                 and entry.from_ in ACTIVE]  # fmt: skip
        cancelled = [j.name for j in result.track.job_list if j.status is S.CANCELLED]
        detail = f"cancelled {', '.join(cancelled)}"
        outcome = await self._audit("cancel", f"asset:{guid}", True, detail, by, reason,
                                    scheduler=lines)
        return outcome

    async def _stop(self, guid: str, job: str, attempt: int, cluster_name: str | None,
                    hpc_job_id: str | None) -> str:
        """Cancel one live attempt on its scheduler; a line saying what happened."""
        cluster = self.clusters.get(cluster_name or "")
        if cluster is None:
            return f"{job}: cluster {cluster_name} is not configured here; nothing cancelled"
        name = scheduler_job_name(guid, job, attempt)
        if cluster.pull:
            return (f"{job}: the agent of {cluster.name} cancels {hpc_job_id or name} at its "
                    "next report")
        try:
            if hpc_job_id is None:
                if self.launcher is not None and (guid, job, attempt) in self.launcher.submitting:
                    return f"{job}: being submitted; cancelled as soon as {cluster.name} answers"
                info = (await cluster.scheduler.lookup([name])).get(name)
                if info is None or info.state.finished:
                    return f"{job}: never started on {cluster.name}"
                hpc_job_id = info.job_id
            await cluster.scheduler.cancel(hpc_job_id)
        except (SchedulerError, TransportError) as exc:
            log.error("cancel on the scheduler failed", asset_guid=guid, job=job,
                      cluster=cluster.name, hpc_job_id=hpc_job_id, error=str(exc))
            return (f"{job}: could not cancel {cluster.scheduler.kind} job "
                    f"{hpc_job_id or name} on {cluster.name}: {exc}; cancel it by hand")
        return f"{job}: {cluster.scheduler.kind} job {hpc_job_id} on {cluster.name} cancelled"

    async def retry(self, guid: str, job: str | None = None, *, from_job: str | None = None,
                    by: str, reason: str | None) -> ActionResult:
        """A job in ERROR or FAILED (`job`), every job in ERROR (neither), or the asset from
        `from_job` on: that job and every later one run again."""
        if job and from_job:
            raise ControlError(422, "give a job to retry or --from JOB, not both")
        track = await self._asset(guid)
        for name in (job, from_job):
            if name and not any(j.name == name for j in track.job_list):
                raise ControlError(404, f"asset {guid} has no job {name}; its jobs: "
                                   + ", ".join(j.name for j in track.job_list))
        if from_job:
            return await self._rerun(track, from_job, by=by, reason=reason)
        if track.jobs_status is S.CANCELLED:
            raise ControlError(409, f"asset {guid} is CANCELLED: run it again with "
                               f"`dasscod retry {guid} --from JOB`")
        if job:
            status = track.job(job).status
            if status not in RETRYABLE:
                raise ControlError(409, f"job {job} of {guid} is {status}, not ERROR or FAILED: "
                                   f"nothing to retry (to run it again: `dasscod retry {guid} "
                                   f"--from {job}`)")
            names = [job]
        else:
            names = [j.name for j in track.failed_jobs]
            if not names:
                raise ControlError(409, f"no job of {guid} is in ERROR (the asset is "
                                   f"{track.jobs_status}): nothing to retry (to run a job "
                                   f"again: `dasscod retry {guid} --from JOB`)")
        result = await self.stores.track.apply(
            guid, [JobEvent(n, Event.OPERATOR_RETRY) for n in names],
            cause="control: retry", by=by, reason=reason,
        )  # fmt: skip
        if not result.applied:
            raise ControlError(409, f"{', '.join(names)} of {guid} changed meanwhile: "
                               + "; ".join(result.ignored))
        detail = f"retrying {', '.join(names)}"
        return await self._audit("retry", f"asset:{guid}", True, detail, by, reason)

    async def _rerun(self, track: Track, from_job: str, *, by: str,
                     reason: str | None) -> ActionResult:
        guid = track.id
        start = track.job(from_job)
        running = [j for j in track.job_list if j.status in ACTIVE]
        if running:
            raise ControlError(409, f"job {running[0].name} of {guid} is {running[0].status}: "
                               "wait for it to end, or cancel the asset first")
        unsettled = [j for j in track.job_list
                     if j.priority < start.priority and j.status not in SETTLED]
        if unsettled:
            first = unsettled[0]
            raise ControlError(409, f"job {first.name} (before {from_job}) is {first.status}: "
                               f"retry from {first.name} instead")
        if start.status is S.WAITING and start.attempt == 0:
            raise ControlError(409, f"job {from_job} of {guid} has not run yet: nothing to "
                               "retry")
        names = [j.name for j in track.job_list
                 if j.name == from_job or j.priority > start.priority]
        result = await self.stores.track.apply(
            guid, [JobEvent(n, Event.OPERATOR_RERUN) for n in names],
            cause=f"control: retry from {from_job}", by=by, reason=reason,
            expect={"active_clusters": []},
        )  # fmt: skip
        if not result.applied:
            raise ControlError(409, f"{guid} changed meanwhile (a job started?): "
                               + "; ".join(result.ignored))
        detail = f"running again from {from_job}: {', '.join(names)}"
        return await self._audit("retry", f"asset:{guid}", True, detail, by, reason)

    async def ars_retry(self, guid: str, flag: str | None = None, *, by: str,
                        reason: str | None) -> ActionResult:
        """Reset an ARS flag left in ERROR (`flag`; none: every ARS flag in ERROR) so that the
        ARS sync takes the asset up again at the step that failed (`services.ars_retry`)."""
        if flag is not None and flag not in ARS_FLAGS:
            raise ControlError(422, f"{flag} is not an ARS flag: give one of "
                               + ", ".join(ARS_FLAGS))
        track = await self._asset(guid)
        in_error = flags_in_error(track)
        if flag is not None:
            value = getattr(track, flag)
            if value is not Flag.ERROR:
                raise ControlError(409, f"{flag} of {guid} is {value}, not ERROR: nothing to "
                                   f"reset (`dasscod show {guid}` gives its ARS state)")
            flags: list[ArsFlag] = [f for f in in_error if f == flag]
        else:
            if not in_error:
                raise ControlError(409, f"no ARS flag of {guid} is in ERROR: nothing to reset "
                                   f"(`dasscod show {guid}` gives its ARS state)")
            flags = in_error
        reset = plan_reset(track, flags)
        result = await self.stores.track.apply(
            guid, asset_fields=reset.fields, expect=reset.expect, known=track,
            cause=f"control: ARS retry ({track.ars_error or 'no ARS error recorded'})",
            by=by, reason=reason,
        )  # fmt: skip
        if not result.applied:
            raise ControlError(409, f"{', '.join(flags)} of {guid} changed meanwhile (reset "
                               "by someone else?): `dasscod show " + guid + "` gives its ARS "
                               "state now")
        detail = "ARS sync retries " + ", ".join(
            f"{f} (ERROR -> {reset.fields[f]})" for f in flags)
        if result.track.available_for_services is not Flag.YES:
            detail += "; the asset is paused: the ARS sync takes it up once it is resumed"
        return await self._audit("ars retry", f"asset:{guid}", True, detail, by, reason)

    # ------------------------------------------------------------------ audit

    async def _audit(self, action: str, target: str, changed: bool, detail: str, by: str,
                     reason: str | None, *, scheduler: Sequence[str] = ()) -> ActionResult:
        outcome = "; ".join([detail, *scheduler])
        record = await self.stores.audit.record(by, action, target, reason=reason,
                                                outcome=outcome)
        log.info("operator action", by=by, action=action, target=target, changed=changed,
                 reason=reason, outcome=outcome)
        return ActionResult(action=action, target=target, changed=changed, detail=detail,
                            by=by, at=record.at, scheduler=list(scheduler))
