"""What each HPC callback does to the stores.

Order matters for crash safety: effects on `metadata` and `mos` are idempotent and written
first; the `track` transition that ends the job is written last, as the commit point. If the
daemon dies in between, the job's runner gets no acknowledgement, sends the callback again,
and the repeated effects change nothing.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from dasscod.log import get_logger
from dasscod.model import (
    SUBJECT_TO_TYPE,
    AssetType,
    FileEntry,
    Flag,
    Job,
    JobStatus,
    Metadata,
    Track,
)
from dasscod.pipeline import TERMINAL, Event, JobEvent
from dasscod.protocol.callbacks import (
    Ack,
    AssetLinks,
    BarcodeResult,
    FailedCallback,
    FileInfo,
    FileLink,
    FinishedCallback,
    JobResults,
    QueuedCallback,
    StartedCallback,
)
from dasscod.services.replies import Rejected, ack
from dasscod.store import Applied, AssetExists, AssetNotFound, MosMember, Stores
from dasscod.tokens import JobClaims

log = get_logger(__name__)

CAUSE = "callback"
#: A job's attempt that may still write: submitted and not yet ended.
LIVE = frozenset({JobStatus.STARTING, JobStatus.QUEUED, JobStatus.RUNNING})
#: The asset-level write routes, and the dassco-hpc modules whose work each one is: a token
#: of another job (OCR, say) cannot flip hpc_ready or register derivatives.
ROUTE_MODULES: dict[str, frozenset[str]] = {
    "ready": frozenset({"load"}),
    "clean-up": frozenset({"clean_up"}),
    "derivatives": frozenset({"derivatives", "upload"}),
}
#: The exit code the runner reports after the scheduler's SIGTERM (128 + 15).
SIGTERM_EXIT = 143
#: A SIGTERM this close to the job's time limit, or later, is the scheduler enforcing it
#: (Slurm checks limits every 30 s, so it comes at or after the limit; the clocks of the
#: start and the failure reports are the job's own, so a few seconds of slack suffice).
TIME_LIMIT_SLACK_S = 5.0


class CallbackRejected(Rejected):
    """The callback is well-formed but refers to something that does not exist or that this
    job may not touch."""


class Slots(Protocol):
    """The dispatch throttle's side of a job's end (`Throttle.ending`)."""

    def ending(self, guid: str, job: str) -> AbstractContextManager[None]: ...


@dataclass
class CallbackService:
    stores: Stores
    #: Told while a job's end is being written, so that its slot is reused at once.
    slots: Slots | None = None

    # ------------------------------------------------------------------ helpers

    async def _track(self, guid: str, *, recent_ok: bool = False) -> Track:
        track = await self.stores.track.get(guid, recent_ok=recent_ok)
        if track is None:
            raise CallbackRejected(404, f"no asset {guid}")
        return track

    @staticmethod
    def _job(track: Track, name: str) -> Job:
        try:
            return track.job(name)
        except KeyError:
            raise CallbackRejected(404, f"asset {track.id} has no job {name!r}") from None

    async def _apply(
        self,
        guid: str,
        events: list[JobEvent],
        *,
        known: Track | None = None,
        asset_fields: dict[str, Any] | None = None,
    ) -> Applied:
        try:
            return await self.stores.track.apply(
                guid, events, cause=CAUSE, known=known, asset_fields=asset_fields
            )
        except AssetNotFound:
            raise CallbackRejected(404, f"no asset {guid}") from None

    @staticmethod
    def _is_live(job: Job, claims: JobClaims) -> bool:
        """Effects on other collections are applied only for the job's current, unfinished
        attempt; a duplicate or stale callback must not apply them a second time."""
        return job.attempt == claims.attempt and job.status not in TERMINAL

    def _ending(self, claims: JobClaims, live: bool) -> AbstractContextManager[None]:
        """The current attempt reported its end: its slot is free while that is written."""
        if self.slots is None or not live:
            return nullcontext()
        return self.slots.ending(claims.asset_guid, claims.job)

    # ------------------------------------------------------------------ job lifecycle

    async def _known_job(self, claims: JobClaims) -> Track:
        """404 for an asset or a job the asset does not have (cheap: usually remembered)."""
        track = await self._track(claims.asset_guid, recent_ok=True)
        self._job(track, claims.job)
        return track

    async def _progress(
        self, claims: JobClaims, event: Event, body: QueuedCallback | StartedCallback
    ) -> Ack:
        """A job reached the scheduler's queue, or started running."""
        await self._known_job(claims)
        ev = JobEvent(
            claims.job, event, attempt=claims.attempt, hpc_job_id=body.hpc_job_id,
            at=body.timestamp,
        )
        return ack(await self._apply(claims.asset_guid, [ev]), claims.job)

    async def queued(self, claims: JobClaims, body: QueuedCallback) -> Ack:
        return await self._progress(claims, Event.QUEUED, body)

    async def started(self, claims: JobClaims, body: StartedCallback) -> Ack:
        return await self._progress(claims, Event.STARTED, body)

    async def failed(self, claims: JobClaims, body: FailedCallback) -> Ack:
        track = await self._known_job(claims)
        reason = body.reason if body.exit_code is None else f"{body.reason} (exit {body.exit_code})"
        exit_state = "FAILED" if body.exit_code is None else f"EXIT_{body.exit_code}"
        limit_s = self._time_limit_reached(track, claims.job, body)
        if limit_s is not None:
            exit_state = "TIMEOUT"
            reason = f"stopped at its time limit of {limit_s} s (SIGTERM from the scheduler)"
        with self._ending(claims, self._is_live(self._job(track, claims.job), claims)):
            result = await self._apply(
                claims.asset_guid,
                [
                    JobEvent(
                        claims.job,
                        Event.FAILED,
                        attempt=claims.attempt,
                        at=body.timestamp,
                        error=reason,
                        exit_state=exit_state,
                        retryable=body.retryable,
                        run_time_s=body.run_time_s,
                    )
                ],
            )
        return ack(result, claims.job)

    def _time_limit_reached(self, track: Track, name: str, body: FailedCallback) -> int | None:
        """The job's time limit if this failure is the scheduler's SIGTERM at that limit (the
        runner reports it like any other signal), else None."""
        pipeline = self.stores.track.pipeline_of(track)
        if body.exit_code != SIGTERM_EXIT or pipeline is None:
            return None
        try:
            limit_s = pipeline.spec(name).time_limit_s
        except KeyError:
            return None
        started = self._job(track, name).job_start_time
        if started is not None and body.timestamp is not None:
            elapsed_s: float | None = (body.timestamp - started).total_seconds()
        else:
            elapsed_s = body.run_time_s
        if elapsed_s is None or elapsed_s < limit_s - TIME_LIMIT_SLACK_S:
            return None
        return limit_s

    async def finished(self, claims: JobClaims, body: FinishedCallback) -> Ack:
        # The copy this process last wrote usually is the stored document; a decision not to
        # apply the results is confirmed against the store before it is taken.
        track = await self._track(claims.asset_guid, recent_ok=True)
        if not self._is_live(self._job(track, claims.job), claims):
            track = await self._track(claims.asset_guid)
        live = self._is_live(self._job(track, claims.job), claims)
        asset_fields: dict[str, Any] = {}
        extra_events: list[JobEvent] = []
        event = JobEvent(
            claims.job,
            Event.FINISHED,
            attempt=claims.attempt,
            at=body.timestamp,
            run_time_s=body.run_time_s,
        )
        with self._ending(claims, live):
            if live:
                asset_fields, extra_events = await self._result_effects(
                    track, claims, body.results
                )
            result = await self._apply(
                claims.asset_guid, [event, *extra_events], known=track, asset_fields=asset_fields
            )
        return ack(result, claims.job)

    async def _result_effects(
        self, track: Track, claims: JobClaims, results: JobResults
    ) -> tuple[dict[str, Any], list[JobEvent]]:
        """Apply a finished job's results to metadata/MOS; return the track changes that go
        into the same write as the job's transition."""
        fields: dict[str, Any] = {}
        events: list[JobEvent] = []
        if results.asset_ready:
            fields["hpc_ready"] = Flag.YES
        if results.clean_up:
            fields["hpc_ready"] = Flag.NO
        if results.metadata:
            await self._merge_metadata(track.id, results.metadata, claims.job)
            fields["update_metadata"] = Flag.YES
        if results.barcode is not None:
            more_fields, events = await self._barcode_effects(track, results.barcode)
            fields.update(more_fields)
        return fields, events

    async def _merge_metadata(self, guid: str, data: dict[str, Any], job: str) -> None:
        try:
            found = await self.stores.metadata.merge(guid, data, updated_by=f"dasscod:{job}")
        except ValueError as exc:
            raise CallbackRejected(422, str(exc)) from None
        if not found:
            raise CallbackRejected(404, f"asset {guid} has no metadata")

    async def _barcode_effects(
        self, track: Track, barcode: BarcodeResult
    ) -> tuple[dict[str, Any], list[JobEvent]]:
        found = await self.stores.metadata.apply_barcode(
            track.id,
            barcodes=barcode.barcodes,
            subject=barcode.asset_subject,
            multispecimen=barcode.MSO,
        )
        if not found:
            raise CallbackRejected(404, f"asset {track.id} has no metadata")
        asset_type = SUBJECT_TO_TYPE[barcode.asset_subject]
        fields: dict[str, Any] = {"asset_type": asset_type, "update_metadata": Flag.YES}
        if barcode.MOS:
            await self._link_mos(track, barcode)
        events: list[JobEvent] = []
        if asset_type is AssetType.DEVICE_TARGET:
            # A calibration target needs no cropping, OCR or derivatives.
            events = [
                JobEvent(j.name, Event.CANCEL)
                for j in track.job_list
                if j.status in (JobStatus.WAITING, JobStatus.RETRY)
            ]
        return fields, events

    async def _link_mos(self, track: Track, barcode: BarcodeResult) -> None:
        if not barcode.disposable:
            # The current system grouped every such asset of a day under "<batch>_None".
            log.warning("MOS reported without a disposable id; not linked", asset_guid=track.id)
            return
        meta = await self.stores.metadata.get(track.id) or {}
        member = MosMember(
            guid=track.id,
            label=barcode.label or barcode.asset_subject == "label",
            disposable_id=barcode.disposable,
            batch_list_name=track.batch_list_name,
            institution=str(meta.get("institution", "")),
            collection=str(meta.get("collection", "")),
            barcodes=barcode.barcodes,
        )
        touched = await self.stores.mos.link(member)
        for guid in touched:
            if guid != track.id:
                await self.stores.track.set_fields(
                    guid, {"update_metadata": Flag.YES}, cause=f"MOS link from {track.id}"
                )

    # ------------------------------------------------------------------ DOMAIN callbacks

    async def _reported(
        self, claims: JobClaims, status: str, results: JobResults, what: str
    ) -> Ack:
        """The current system's result callbacks: a DONE result finishes the job with it, an
        ERROR fails it for good (the job said so; retrying would not help)."""
        if status == "ERROR":
            failure = FailedCallback(asset_guid=claims.asset_guid, job=claims.job,
                                     reason=f"{what} reported ERROR", retryable=False)
            return await self.failed(claims, failure)
        done = FinishedCallback(asset_guid=claims.asset_guid, job=claims.job, results=results)
        return await self.finished(claims, done)

    async def barcode(self, claims: JobClaims, result: BarcodeResult, status: str) -> Ack:
        return await self._reported(claims, status, JobResults(barcode=result),
                                    "barcode reader")

    async def metadata_update(self, claims: JobClaims, data: dict[str, Any], status: str) -> Ack:
        return await self._reported(claims, status, JobResults(metadata=data or None), "job")

    async def asset_ready(self, claims: JobClaims) -> Ack:
        await self.live_job(claims, "ready")
        result = await self._apply(claims.asset_guid, [], asset_fields={"hpc_ready": Flag.YES})
        return ack(result)

    async def clean_up_done(self, claims: JobClaims) -> Ack:
        await self.live_job(claims, "clean-up")
        result = await self._apply(claims.asset_guid, [], asset_fields={"hpc_ready": Flag.NO})
        return ack(result)

    async def register_derivative(self, claims: JobClaims, metadata: Metadata) -> Ack:
        """A job of the parent asset created a derivative: a new asset with `parent_guid`."""
        if metadata.parent_guid != claims.asset_guid:
            raise CallbackRejected(
                403, f"a job of {claims.asset_guid} may only register its own derivatives"
            )
        parent = await self.live_job(claims, "derivatives")
        if await self.stores.track.get(metadata.asset_guid, recent_ok=True) is not None:
            return Ack(applied=False, detail=f"derivative {metadata.asset_guid} already exists")
        with suppress(AssetExists):  # a repeat after a crash between the two
            await self.stores.metadata.insert(metadata)
        derivative = Track.model_validate(
            {
                "_id": metadata.asset_guid,
                "pipeline": parent.pipeline,
                "batch_list_name": parent.batch_list_name,
                "asset_type": parent.asset_type,
                "parent_guid": parent.id,
                "job_list": [],
                "asset_size": 0,
                "hpc_ready": Flag.YES,  # its file was made on the cluster
            }
        )
        try:
            await self.stores.track.insert(derivative)
        except AssetExists:  # registered meanwhile by a repeat of this call
            return Ack(applied=False, detail=f"derivative {metadata.asset_guid} already exists")
        log.info("derivative registered", asset_guid=metadata.asset_guid, parent_guid=parent.id)
        return Ack(applied=True, status=str(derivative.jobs_status))

    async def live_job(self, claims: JobClaims, route: str) -> Track:
        """The token's asset, if the token's attempt is the job's live one and the route is
        that job's work; else 409 (the attempt has ended or was replaced) or 403. Checked
        before any change, so a stale token changes nothing."""
        track = await self._track(claims.asset_guid, recent_ok=True)
        job = self._job(track, claims.job)
        if job.attempt != claims.attempt or job.status not in LIVE:
            track = await self._track(claims.asset_guid)  # confirm against the store
            job = self._job(track, claims.job)
        if job.attempt != claims.attempt or job.status not in LIVE:
            raise CallbackRejected(
                409, f"job {claims.job} attempt {claims.attempt} of {claims.asset_guid} is not "
                f"running (the job is {job.status}, attempt {job.attempt}): its token no "
                "longer changes anything")
        pipeline = self.stores.track.pipeline_of(track)
        module = pipeline.spec(claims.job).module_name if pipeline is not None else None
        if module not in ROUTE_MODULES[route]:
            raise CallbackRejected(
                403, f"job {claims.job} (module {module}) may not use the {route} route: it "
                f"belongs to the {', '.join(sorted(ROUTE_MODULES[route]))} job")
        return track

    async def track_for(self, claims: JobClaims, guid: str) -> Track:
        """The asset `guid` if the token's job may act on it (its own, or a derivative)."""
        return await self._own_or_derivative(claims, guid)

    async def _own_or_derivative(self, claims: JobClaims, guid: str) -> Track:
        # The copy this process last wrote will do: an asset's parent never changes, and its
        # files are recorded by this process (which forgets its copy when it adds one).
        track = await self._track(guid, recent_ok=True)
        if guid != claims.asset_guid and track.parent_guid != claims.asset_guid:
            raise CallbackRejected(403, f"this job's token is not valid for asset {guid}")
        return track

    async def add_file(self, claims: JobClaims, guid: str, info: FileInfo) -> Ack:
        await self.live_job(claims, "derivatives")
        await self.derivative_of(claims, guid)
        entry = FileEntry(name=info.name, type=info.type, file_size=info.file_size,
                          check_sum=info.check_sum, sha256=info.sha256)
        added = await self.stores.track.add_file(guid, entry, cause=CAUSE)
        return Ack(applied=added, detail=None if added else f"file {info.name} already recorded")

    async def derivative_of(self, claims: JobClaims, guid: str) -> Track:
        """A derivative of the token's asset: files are added to, and received for,
        derivatives only. An original's files come from intake and are never replaced."""
        track = await self._own_or_derivative(claims, guid)
        if track.parent_guid != claims.asset_guid:
            raise CallbackRejected(
                403, f"{guid} is an original asset: its files come from intake and cannot be "
                "added or replaced through the listener")
        return track

    async def derivative_uploaded(self, claims: JobClaims, guid: str) -> Ack:
        await self.live_job(claims, "derivatives")
        await self._own_or_derivative(claims, guid)
        result = await self._apply(guid, [], asset_fields={"has_new_file": Flag.AWAIT})
        return ack(result)

    async def derivative_failed(self, claims: JobClaims, ppi: int | None, note: str | None) -> Ack:
        await self.live_job(claims, "derivatives")
        await self.stores.metadata.mark_media_issue(claims.asset_guid, ppi=ppi, note=note)
        result = await self._apply(
            claims.asset_guid, [], asset_fields={"update_metadata": Flag.YES}
        )
        return Ack(applied=True, status=str(result.track.jobs_status))

    # ------------------------------------------------------------------ reads

    async def metadata(self, claims: JobClaims, guid: str) -> dict[str, Any]:
        await self._own_or_derivative(claims, guid)
        doc = await self.stores.metadata.get(guid)
        if doc is None:
            raise CallbackRejected(404, f"asset {guid} has no metadata")
        doc.pop("_id", None)
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in doc.items()}

    async def links(self, claims: JobClaims, guid: str) -> AssetLinks:
        track = await self._own_or_derivative(claims, guid)
        base = Path(track.temporary_path_local) if track.temporary_path_local else None
        return AssetLinks(
            asset_guid=guid,
            files=[
                FileLink(
                    name=f.name,
                    type=f.type,
                    check_sum=f.check_sum,
                    file_size=f.file_size,
                    ars_link=f.ars_link,
                    local_path=str(base / f.name) if base else None,
                )
                for f in track.file_list
                if not f.deleted
            ],
        )
