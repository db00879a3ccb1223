"""The ARS sync: keeps ARS in step with the track flags, one guarded transition at a time.

Six steps, each a loop over an indexed flag query, woken by `offer` (the daemon's `_on_change`)
and by a slow sweep:

- **create**  `is_in_ars` NO → AWAIT (claim) → `create_asset` → YES, `has_open_share` YES,
  `has_new_file` YES (when the asset has files). An AWAIT nobody in this process works on
  (a crash, a lost answer) and a create answered "already exists" are resolved by asking ARS:
  the asset exists → YES (no second create, so no second share), absent → NO.
- **reopen**  `has_new_file` YES after the share was closed (a file reported after the ERDA
  sync): `has_open_share` NO → AWAIT (claim) → `create_share` → YES, `erda_sync` NO; the
  files then go through upload, synchronise and confirm again.
- **upload**  `has_new_file` YES → UPLOADING (claim) → every file not yet in ERDA, with its
  CRC-32 → AWAIT.
- **synchronise**  `has_new_file` AWAIT, `erda_sync` NO → AWAIT (claim) → `synchronize`.
- **confirm**  `erda_sync` AWAIT → `asset_status`: COMPLETED → `erda_sync` YES, `has_new_file`
  NO, `has_open_share` NO (ARS closes the share); ERDA_ERROR → NO again, ERROR after
  `max_erda_failures`. Still not finished after `erda_timeout_s`: requested once more; after a
  second wait the files in ERDA are listed: all there → the share is closed and the asset
  marked complete in ARS (the one case the contract gives `complete` for: the files are in,
  the status lags); some missing → ERROR naming them.
- **metadata**  `update_metadata` YES, `is_in_ars` YES → full-body update → NO, written only if
  `metadata_seq` is still the one read before the push (a change meanwhile → one more push).

Throttles (DOMAIN.md's production values by default): create and reopen open a share only
while the MB in open shares stay under their caps, and synchronise requests only while fewer
than `max_awaiting_erda` assets await their ERDA sync; a confirmed sync wakes them again.

ARS unavailable (after the client's retries): the claim is given back with an `ars_not_before`
backoff, never ERROR, and the shared circuit breaker counts it. ARS refused (4xx): the flag
goes to ERROR with `ars_error` = what ARS said, and the queue moves on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio

from dasscod.ars import (
    ArsBadRequest,
    ArsClient,
    ArsConflict,
    ArsNotFound,
    ArsRejected,
    ArsUnavailable,
    AssetUpdateRequest,
    MinimalAsset,
    size_mb,
)
from dasscod.ars.health import BreakerState, CircuitBreaker
from dasscod.ars.mapping import to_ars_asset
from dasscod.ars.models import AssetStatusInfo
from dasscod.ars.throttle import ShareBudget
from dasscod.log import get_logger
from dasscod.model import Flag, Track, utcnow
from dasscod.pipeline import Pipeline
from dasscod.store import Stores
from dasscod.store.track import files_mb

log = get_logger(__name__)

T = TypeVar("T")

STEPS = ("create", "reopen", "upload", "synchronise", "confirm", "metadata")
#: Steps that open shares (size caps) and the one that requests ERDA syncs (count cap).
OPENING = ("create", "reopen")
BYTES_PER_MB = 1_000_000
#: The shortest gap between two status questions about one asset awaiting ERDA.
MIN_CONFIRM_GAP_S = 0.05
YES, NO, AWAIT, UPLOADING, ERROR = Flag.YES, Flag.NO, Flag.AWAIT, Flag.UPLOADING, Flag.ERROR


@dataclass(frozen=True)
class SyncOptions:
    #: Every step looks for work at least this often even without a wake-up.
    sweep_s: float = 30.0
    #: How often assets awaiting ERDA are asked about (ERDA sync is asynchronous).
    confirm_poll_s: float = 2.0
    batch: int = 50
    #: ARS calls in flight at once, over all steps.
    concurrency: int = 16
    #: Allocation = the asset's files in MB (rounded up) plus this, for derivatives.
    allocation_headroom_mb: int = 1
    #: An asset whose ARS call failed as unavailable is left alone this long.
    unavailable_backoff_s: float = 10.0
    max_erda_failures: int = 3
    breaker_threshold: int = 3
    #: While ARS is down, one probe call per cooldown. Kept short on purpose: a probe is one
    #: request, and the cooldown is how late the sync notices that ARS is back.
    breaker_cooldown_s: float = 2.0
    breaker_max_cooldown_s: float = 5.0
    #: An ERDA sync not finished after this long is requested again, then checked.
    erda_timeout_s: float = 900.0
    max_awaiting_erda: int = 12
    max_open_mb: int = 60_000
    max_open_original_mb: int = 20_000
    max_open_derivative_mb: int = 30_000


def require_files_in_ars(
    pipelines: Mapping[str, Pipeline], jobs: Sequence[str] = ("load",)
) -> dict[str, Pipeline]:
    """With ARS enabled, the jobs that fetch an asset's files from ARS (`load`) may start only
    once the files are there: they require `is_in_ars` = YES and `erda_sync` = YES."""
    extra = {"is_in_ars": YES, "erda_sync": YES}
    result: dict[str, Pipeline] = {}
    for name, pipeline in pipelines.items():
        specs = [
            s.model_copy(update={"requires": {**s.requires, **extra}}) if s.name in jobs else s
            for s in pipeline.jobs
        ]
        result[name] = pipeline.model_copy(update={"jobs": specs})
    return result


def wanted_steps(track: Track) -> list[str]:
    """The steps that may have work for this document (what `offer` wakes)."""
    steps = []
    if track.is_in_ars in (NO, AWAIT) or track.has_new_file is AWAIT:
        steps.append("create")  # AWAIT: a parent's files arrived, its derivatives may go
    if track.is_in_ars is YES and track.has_new_file is YES and track.has_open_share in (NO, AWAIT):
        steps.append("reopen")
    if track.is_in_ars is YES and track.has_new_file in (YES, UPLOADING):
        steps.append("upload")
    if track.has_new_file is AWAIT and track.erda_sync is NO:
        steps.append("synchronise")
    if track.erda_sync is AWAIT:
        steps.append("confirm")
    if track.update_metadata is YES and track.is_in_ars is YES:
        steps.append("metadata")
    return steps


def _pending_files(track: Track) -> bool:
    return any(not f.deleted and f.erda_sync is NO for f in track.file_list)


class ArsSync:
    def __init__(
        self,
        stores: Stores,
        client: ArsClient,
        *,
        stopping: anyio.Event,
        options: SyncOptions = SyncOptions(),
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.stores = stores
        self.client = client
        self.stopping = stopping
        self.options = options
        self.breaker = breaker or CircuitBreaker(
            threshold=options.breaker_threshold,
            cooldown_s=options.breaker_cooldown_s,
            max_cooldown_s=options.breaker_max_cooldown_s,
        )
        if self.breaker.on_close is None:
            self.breaker.on_close = self._recovered
        #: When ARS last answered again after an outage: assets parked before are due.
        self._recovered_at: datetime | None = None
        self._events: dict[str, anyio.Event] = {s: anyio.Event() for s in STEPS}
        #: Work in progress in this process: guid (file side) or "meta:" + guid.
        self._busy: set[str] = set()
        self._limiter = anyio.CapacityLimiter(options.concurrency)
        #: When each asset awaiting ERDA was last asked about (see `_confirm_polls`).
        self._polled: dict[str, datetime] = {}
        #: Steps held back by a throttle now (logged once when it starts and when it ends).
        self._throttled: set[str] = set()
        self.update_user = client.settings.update_user

    # ------------------------------------------------------------------ wake-ups

    def offer(self, track: Track) -> None:
        for step in wanted_steps(track):
            self._events[step].set()

    def _recovered(self) -> None:
        self._recovered_at = utcnow()
        self.wake_all()

    def wake_all(self) -> None:
        for event in self._events.values():
            event.set()

    # ------------------------------------------------------------------ loops

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for step in STEPS:
                tg.start_soon(self._loop, step)
            await self.stopping.wait()
            self.wake_all()

    async def _loop(self, step: str) -> None:
        handler: Callable[[Track], Awaitable[None]] = getattr(self, f"_{step}")
        sweep = self.options.sweep_s
        if step == "confirm":
            sweep = min(sweep, self.options.confirm_poll_s)
        while not self.stopping.is_set():
            event = anyio.Event()
            self._events[step] = event  # armed before looking: no wake-up is missed
            wait = sweep
            if self.breaker.state is BreakerState.OPEN and self.breaker.remaining_s() > 0:
                wait = min(wait, self.breaker.remaining_s() + 0.001)
            else:
                now = utcnow()
                candidates = await self._queue(step)
                due = [t for t in candidates if self._due(t, now)]
                if not due and candidates and self.breaker.state is not BreakerState.CLOSED:
                    # The cooldown is over: probe with the asset parked longest, rather than
                    # wait until some asset's own backoff ends.
                    due = [min(candidates, key=lambda t: t.ars_not_before or now)]
                parked = [t.ars_not_before for t in candidates if t.ars_not_before is not None]
                later = [p for p in parked if p > now]
                if step == "confirm":
                    polls = self._confirm_polls(candidates, now)
                    due = [t for t in due if polls[t.id] <= now]
                    later.extend(p for p in polls.values() if p > now)
                if later:
                    wait = min(wait, max(0.001, (min(later) - now).total_seconds()))
                keys = {f"meta:{t.id}" if step == "metadata" else t.id for t in due}
                idle = keys - self._busy  # work another step holds is not ours to retry now
                admitted = await self._admit(step, due)
                async with anyio.create_task_group() as tg:
                    for track in admitted:
                        tg.start_soon(self._one, step, handler, track)
                if len(candidates) >= self.options.batch and idle and step not in self._throttled:
                    continue  # a full batch: there may be more
            if self.stopping.is_set():
                return
            with anyio.move_on_after(wait):
                await event.wait()

    async def _queue(self, step: str) -> list[Track]:
        q, n = self.stores.track.ars_queue, self.options.batch
        afs = {"available_for_services": YES.value}
        if step == "create":
            return await q("is_in_ars", [NO, AWAIT], n, **afs)
        if step == "reopen":
            return await q(
                "has_new_file", [YES], n, is_in_ars=YES, has_open_share=[NO, AWAIT], **afs
            )
        if step == "upload":
            return await q(
                "has_new_file", [YES, UPLOADING], n, is_in_ars=YES, has_open_share=YES, **afs
            )
        if step == "synchronise":
            return await q("has_new_file", [AWAIT], n, erda_sync=NO, is_in_ars=YES, **afs)
        if step == "confirm":
            return await q("erda_sync", [AWAIT], n, **afs)
        return await q("update_metadata", [YES], n, is_in_ars=YES, **afs)

    async def _one(
        self, step: str, handler: Callable[[Track], Awaitable[None]], track: Track
    ) -> None:
        key = f"meta:{track.id}" if step == "metadata" else track.id
        if key in self._busy:
            return
        async with self._limiter:
            # Asked only once a slot is free: work queued behind the limit while the breaker
            # opened must not go out to a service that is down.
            if key in self._busy or self.stopping.is_set() or not self.breaker.allow():
                return
            probe = self.breaker.state is BreakerState.HALF_OPEN
            self._busy.add(key)
            try:
                await handler(track)
            except Exception:
                # A store error or a bug with one asset must not stop the others.
                log.exception("ars sync step failed", step=step, asset_guid=track.id)
            finally:
                self._busy.discard(key)
                if probe:
                    self.breaker.release()

    async def _admit(self, step: str, due: list[Track]) -> list[Track]:
        """The part of `due` the throttles let through in this pass."""
        o = self.options
        if step == "synchronise" and due:
            awaiting = await self.stores.track.count_flag("erda_sync", AWAIT)
            admitted = due[: max(0, o.max_awaiting_erda - awaiting)]
            self._note_throttle(step, len(admitted) < len(due), awaiting=awaiting)
            return admitted
        if step not in OPENING or not due:
            return due
        budget = ShareBudget.from_open(
            [(self._allocation_for(mb), d) for mb, d in await self.stores.track.open_shares()],
            max_total_mb=o.max_open_mb,
            max_original_mb=o.max_open_original_mb,
            max_derivative_mb=o.max_open_derivative_mb,
        )
        admitted = [
            t
            for t in due
            # An AWAIT being resolved opens nothing new.
            if (step == "create" and t.is_in_ars is AWAIT)
            or budget.admit(self._allocation_mb(t), derivative=t.parent_guid is not None)
        ]
        self._note_throttle(step, len(admitted) < len(due), open_mb=round(budget.used_mb))
        return admitted

    def _note_throttle(self, step: str, held: bool, **state: int) -> None:
        if held and step not in self._throttled:
            self._throttled.add(step)
            log.info("ars sync throttled", step=step, **state)
        elif not held and step in self._throttled:
            self._throttled.discard(step)
            log.info("ars sync throttle released", step=step, **state)

    def _wake_throttled(self) -> None:
        """A share closed or a sync left AWAIT: room for the steps that were held back."""
        for step in (*OPENING, "synchronise"):
            self._events[step].set()

    def _confirm_polls(self, awaiting: list[Track], now: datetime) -> dict[str, datetime]:
        """When to ask next about each asset awaiting ERDA: at once, then at gaps growing with
        the sync's age up to `confirm_poll_s`, so that a quick sync is confirmed quickly (and
        frees its place under `max_awaiting_erda`) while a slow one costs few calls."""
        self._polled = {t.id: self._polled[t.id] for t in awaiting if t.id in self._polled}
        polls = {}
        for track in awaiting:
            last = self._polled.get(track.id)
            since = track.erda_sync_since
            if last is None or since is None:
                polls[track.id] = now  # not asked yet (in this process): ask now
                continue
            age_s = (last - since).total_seconds()
            gap_s = min(self.options.confirm_poll_s, max(MIN_CONFIRM_GAP_S, age_s / 2))
            polls[track.id] = last + timedelta(seconds=gap_s)
        return polls

    def _due(self, track: Track, now: datetime) -> bool:
        """Not parked, or parked only because ARS was down and it has answered since."""
        parked_until = track.ars_not_before
        if parked_until is None or parked_until <= now:
            return True
        parked_at = parked_until - timedelta(seconds=self.options.unavailable_backoff_s)
        return self._recovered_at is not None and parked_at <= self._recovered_at

    # ------------------------------------------------------------------ helpers

    async def _call(self, call: Awaitable[T]) -> T:
        """One ARS call, its outcome reported to the breaker."""
        try:
            result = await call
        except ArsUnavailable as exc:
            self.breaker.failure(str(exc))
            raise
        except ArsRejected:
            self.breaker.success()  # ARS answered
            raise
        self.breaker.success()
        return result

    async def _claim(
        self, track: Track, fields: Mapping[str, Any], expect: Mapping[str, Any], step: str
    ) -> Track | None:
        """Write the claim before the ARS call, guarded by `expect`: the claimed document, or
        None when another writer moved the asset first."""
        claim = await self.stores.track.apply(
            track.id, asset_fields=fields, expect=expect, known=track, cause=f"ars {step}: claimed"
        )
        return claim.track if claim.applied else None

    async def _set(
        self, track: Track, fields: Mapping[str, Any], *, expect: Mapping[str, Any], cause: str
    ) -> bool:
        result = await self.stores.track.apply(
            track.id, asset_fields=fields, expect=expect, known=track, cause=f"ars {cause}"
        )
        return result.applied

    def _backoff(self) -> datetime:
        return utcnow() + timedelta(seconds=self.options.unavailable_backoff_s)

    async def _give_back(
        self, track: Track, flag: str, claimed: Flag, back: Flag, exc: ArsUnavailable, step: str
    ) -> None:
        await self._set(
            track,
            {flag: back, "ars_not_before": self._backoff()},
            expect={flag: claimed},
            cause=f"{step}: ARS unavailable ({exc.message})",
        )

    async def _fail(
        self, track: Track, flag: str, expect: Mapping[str, Any], message: str, step: str
    ) -> None:
        log.error("ars refused", step=step, asset_guid=track.id, flag=flag, error=message)
        await self._set(
            track, {flag: ERROR, "ars_error": message}, expect=expect, cause=f"{step}: {message}"
        )

    async def _claim_or_resume(
        self, track: Track, flag: str, free: Flag, taken: Flag, step: str, **also: Flag
    ) -> Track | None:
        """Claim `step` (`flag`: `free` -> `taken`, while `also` holds), or take it up again
        when `flag` is already `taken` with nobody here at it: a crash mid-step, and the
        steps are repeatable. None when another writer moved the asset first."""
        if getattr(track, flag) is not free:
            return track
        return await self._claim(track, {flag: taken}, {flag: free, **also}, step)

    async def _metadata_or_fail(
        self, track: Track, flag: str, expect: Mapping[str, Any], step: str
    ) -> dict[str, Any] | None:
        """The asset's metadata document; without one the step fails (`flag` -> ERROR)."""
        md = await self.stores.metadata.get(track.id)
        if md is None:
            await self._fail(track, flag, expect, "no metadata", step)
        return md

    @staticmethod
    def _minimal(track: Track, md: Mapping[str, Any]) -> MinimalAsset:
        return MinimalAsset(
            asset_guid=track.id,
            parent_guid=track.parent_guid,
            institution=str(md["institution"]),
            collection=str(md["collection"]),
        )

    def _allocation_mb(self, track: Track) -> int:
        return self._allocation_for(files_mb(track.model_dump(include={"asset_size", "file_list"})))

    def _allocation_for(self, total_mb: float) -> int:
        return size_mb(int(total_mb * BYTES_PER_MB)) + self.options.allocation_headroom_mb

    # ------------------------------------------------------------------ create

    async def _create(self, track: Track) -> None:
        if track.is_in_ars is AWAIT:
            await self._resolve_create(track, "recovery")
            return
        if track.parent_guid and not await self._parent_ready(track.parent_guid):
            return
        claimed = await self._claim(track, {"is_in_ars": AWAIT}, {"is_in_ars": NO}, "create")
        if claimed is None:
            return
        track = claimed
        md = await self._metadata_or_fail(track, "is_in_ars", {"is_in_ars": AWAIT}, "create")
        if md is None:
            return
        asset = to_ars_asset(md, update_user=self.update_user)
        try:
            created = await self._call(
                self.client.create_asset(asset, allocation_mb=self._allocation_mb(track))
            )
        except ArsUnavailable as exc:
            await self._give_back(track, "is_in_ars", AWAIT, NO, exc, "create")
        except (ArsConflict, ArsBadRequest) as exc:
            if isinstance(exc, ArsConflict) or "already exist" in exc.message.lower():
                await self._resolve_create(track, "create answered 'exists'")
            else:
                await self._fail(track, "is_in_ars", {"is_in_ars": AWAIT}, str(exc), "create")
        except ArsRejected as exc:
            await self._fail(track, "is_in_ars", {"is_in_ars": AWAIT}, str(exc), "create")
        else:
            info = created.http_info
            await self._created(
                track,
                share_open=bool(info and info.ok),
                proxy_path=(info.share_url if info else None) or "",
                problem=(info.allocation_status_text if info else None) or "no share opened",
                cause="create: created",
            )

    async def _parent_ready(self, parent_guid: str) -> bool:
        """ARS takes a derivative only once its parent exists with files."""
        parent = await self.stores.track.get(parent_guid)
        if parent is None:
            return True  # not ours to wait for: ARS decides
        return parent.is_in_ars is YES and parent.has_new_file in (AWAIT, NO)

    async def _created(
        self, track: Track, *, share_open: bool, proxy_path: str, problem: str, cause: str
    ) -> None:
        fields: dict[str, Any] = {
            "is_in_ars": YES,
            "has_open_share": YES if share_open else ERROR,
            "ars_error": None if share_open else f"asset created without a share: {problem}",
            "ars_not_before": None,
        }
        # Only ever raise has_new_file here: `track` was read before the create call, and a
        # file reported meanwhile (add_file sets YES) must not be written back to NO.
        if share_open and _pending_files(track):
            fields["has_new_file"] = YES
        if proxy_path:
            fields["proxy_path"] = proxy_path
        await self._set(track, fields, expect={"is_in_ars": AWAIT}, cause=cause)

    async def _resolve_create(self, track: Track, why: str) -> None:
        """Is an asset we may or may not have created in ARS? Ask, never create twice."""
        try:
            status = await self._call(self.client.asset_status(track.id))
        except ArsNotFound:
            await self._set(
                track, {"is_in_ars": NO}, expect={"is_in_ars": AWAIT},
                cause=f"create {why}: not in ARS",
            )
        except ArsUnavailable:
            await self._set(
                track, {"ars_not_before": self._backoff()}, expect={"is_in_ars": AWAIT},
                cause=f"create {why}: ARS unavailable",
            )
        except ArsRejected as exc:
            await self._fail(track, "is_in_ars", {"is_in_ars": AWAIT}, str(exc), "create")
        else:
            await self._created(
                track,
                share_open=status.share_allocation_mb is not None,
                proxy_path="",
                problem=f"ARS status {status.status}",
                cause=f"create {why}: found in ARS",
            )

    # ------------------------------------------------------------------ reopen

    async def _reopen(self, track: Track) -> None:
        """A file reported after the asset's share was closed: open a share again (never a
        second one: ARS answers 409 while one is open, which means an earlier try got through)."""
        if not track.temporary_path_local:
            return  # nothing to upload yet; the file's arrival wakes this step again
        claimed = await self._claim_or_resume(
            track, "has_open_share", NO, AWAIT, "reopen", has_new_file=YES
        )
        if claimed is None:
            return
        track = claimed
        expect = {"has_open_share": AWAIT}
        md = await self._metadata_or_fail(track, "has_open_share", expect, "reopen")
        if md is None:
            return
        proxy_path = ""
        try:
            info = await self._call(
                self.client.create_share(
                    self._minimal(track, md), allocation_mb=self._allocation_mb(track)
                )
            )
            proxy_path = info.share_url or ""
        except ArsUnavailable as exc:
            await self._give_back(track, "has_open_share", AWAIT, NO, exc, "reopen")
            return
        except ArsConflict:
            pass  # already open: our earlier call got through before its answer was lost
        except ArsRejected as exc:
            await self._fail(track, "has_open_share", expect, str(exc), "reopen")
            return
        fields: dict[str, Any] = {
            "has_open_share": YES,
            "erda_sync": NO,
            "erda_failures": 0,
            "erda_timeouts": 0,
            "ars_not_before": None,
            "ars_error": None,
        }
        if proxy_path:
            fields["proxy_path"] = proxy_path
        await self._set(track, fields, expect=expect, cause="reopen: share open for new files")

    # ------------------------------------------------------------------ upload

    async def _upload(self, track: Track) -> None:
        if not track.temporary_path_local:
            # A derivative whose files are still on the cluster: its upload job sends them to
            # the listener, which sets the path (and so wakes this step).
            return
        claimed = await self._claim_or_resume(track, "has_new_file", YES, UPLOADING, "upload")
        if claimed is None:
            return
        track = claimed
        expect = {"has_new_file": UPLOADING}
        md = await self._metadata_or_fail(track, "has_new_file", expect, "upload")
        if md is None:
            return
        minimal = self._minimal(track, md)
        folder = Path(track.temporary_path_local)
        files = []
        try:
            for entry in track.file_list:
                if entry.deleted or entry.erda_sync is not NO:
                    files.append(entry)
                    continue
                try:
                    data = await anyio.Path(folder / entry.name).read_bytes()
                except OSError as exc:
                    await self._fail(
                        track, "has_new_file", expect, f"cannot read {entry.name}: {exc}", "upload"
                    )
                    return
                await self._call(
                    self.client.upload_file(minimal, entry.name, data, crc=entry.check_sum)
                )
                link = self.client.file_url(minimal, entry.name)
                files.append(entry.model_copy(update={"ars_link": link}))
        except ArsUnavailable as exc:
            await self._give_back(track, "has_new_file", UPLOADING, YES, exc, "upload")
            return
        except ArsRejected as exc:
            await self._fail(track, "has_new_file", expect, str(exc), "upload")
            return
        await self._set(
            track,
            {"has_new_file": AWAIT, "file_list": files, "ars_error": None},
            expect=expect,
            cause="upload: files uploaded",
        )

    # ------------------------------------------------------------------ synchronise

    async def _synchronise(self, track: Track) -> None:
        expect = {"erda_sync": AWAIT}
        claimed = await self._claim(
            track,
            {"erda_sync": AWAIT, "erda_sync_since": utcnow()},
            {"erda_sync": NO, "has_new_file": AWAIT},
            "synchronise",
        )
        if claimed is None:
            return
        track = claimed
        md = await self._metadata_or_fail(track, "erda_sync", expect, "synchronise")
        if md is None:
            return
        try:
            await self._call(
                self.client.synchronize(
                    track.id,
                    workstation=str(md.get("workstation_name", "")),
                    pipeline=str(md.get("pipeline_name", "")),
                )
            )
        except ArsUnavailable as exc:
            await self._give_back(track, "erda_sync", AWAIT, NO, exc, "synchronise")
        except ArsBadRequest as exc:
            # A retried call whose first attempt got through is refused ("no open share"):
            # ARS's status says whether the sync is under way.
            try:
                status = await self._call(self.client.asset_status(track.id))
            except ArsUnavailable as again:
                await self._give_back(track, "erda_sync", AWAIT, NO, again, "synchronise")
                return
            except ArsRejected:
                status = None
            if status is None or status.status not in ("ASSET_RECEIVED", "COMPLETED"):
                await self._fail(track, "erda_sync", expect, str(exc), "synchronise")
        except ArsRejected as exc:
            await self._fail(track, "erda_sync", expect, str(exc), "synchronise")

    # ------------------------------------------------------------------ confirm

    async def _confirm(self, track: Track) -> None:
        expect = {"erda_sync": AWAIT}
        self._polled[track.id] = utcnow()
        try:
            status = await self._call(self.client.asset_status(track.id))
        except ArsUnavailable:
            return  # asked again at the next poll; the breaker counted it
        except ArsRejected as exc:
            await self._fail(track, "erda_sync", expect, str(exc), "confirm")
            return
        if status.status == "COMPLETED" and status.share_allocation_mb is None:
            await self._synced(track, cause="confirm: in ERDA")
        elif status.status in ("ERDA_ERROR", "ERDA_FAILED"):
            failures = track.erda_failures + 1
            message = f"ERDA sync failed ({status.status}): {status.error_message or 'no message'}"
            if failures >= self.options.max_erda_failures:
                await self._fail(
                    track, "erda_sync", expect, f"{message}; {failures} attempts", "confirm"
                )
            else:
                await self._set(
                    track,
                    {"erda_sync": NO, "erda_failures": failures, "ars_error": message},
                    expect=expect,
                    cause=f"confirm: {message}; synchronising again",
                )
            self._wake_throttled()
        elif status.status == "METADATA_RECEIVED":
            # The synchronisation never started (claimed, then a crash): synchronise again.
            await self._set(
                track, {"erda_sync": NO}, expect=expect, cause="confirm: sync never started"
            )
            self._wake_throttled()
        elif self._waited_s(track) >= self.options.erda_timeout_s:
            await self._stuck(track, status)
        # Otherwise (ASSET_RECEIVED, or COMPLETED with the share still open): ERDA is on it.

    def _waited_s(self, track: Track) -> float:
        if track.erda_sync_since is None:
            return 0.0
        return (utcnow() - track.erda_sync_since).total_seconds()

    async def _synced(self, track: Track, *, cause: str) -> None:
        """The share's files are in ERDA and the share is closed. A file reported during the
        sync (no `ars_link`: never uploaded) keeps `has_new_file` YES for the reopen step."""
        files, pending = [], False
        for entry in track.file_list:
            if not entry.deleted and entry.erda_sync is NO:
                if entry.ars_link:
                    entry = entry.model_copy(update={"erda_sync": YES})
                else:
                    pending = True
            files.append(entry)
        done = await self._set(
            track,
            {
                "erda_sync": YES,
                "has_new_file": YES if pending else NO,
                "has_open_share": NO,
                "proxy_path": "",
                "file_list": files,
                "erda_failures": 0,
                "erda_timeouts": 0,
                "erda_sync_since": None,
                "ars_error": None,
            },
            # The file list is written whole: only over the list it was computed from.
            expect={"erda_sync": AWAIT, "file_list": track.file_list},
            cause=cause,
        )
        if done:
            self._wake_throttled()
        else:
            self._events["confirm"].set()  # a file was reported meanwhile: look again

    async def _stuck(self, track: Track, status: AssetStatusInfo) -> None:
        """ERDA has not finished within `erda_timeout_s`: request once more; the second time,
        believe what is in ERDA rather than the status."""
        expect = {"erda_sync": AWAIT}
        waited = f"{status.status} for {self._waited_s(track):.0f} s"
        if track.erda_timeouts == 0:
            await self._set(
                track,
                {"erda_sync": NO, "erda_timeouts": 1, "ars_error": f"ERDA sync still {waited}"},
                expect=expect,
                cause=f"confirm: ERDA sync still {waited}; requesting it again",
            )
            self._wake_throttled()
            return
        md = await self._metadata_or_fail(track, "erda_sync", expect, "confirm")
        if md is None:
            return
        try:
            in_erda = {
                path.split(f"/{track.id}/", 1)[-1]
                for path in await self._call(self.client.list_files(track.id))
            }
            uploaded = [f.name for f in track.file_list if not f.deleted and f.ars_link]
            missing = sorted(set(uploaded) - in_erda)
            if missing:
                await self._fail(
                    track,
                    "erda_sync",
                    expect,
                    f"ERDA sync stuck in {waited} after {track.erda_timeouts + 1} requests; "
                    f"not in ERDA: {', '.join(missing)}",
                    "confirm",
                )
                self._wake_throttled()
                return
            if status.share_allocation_mb is not None:
                with contextlib.suppress(ArsNotFound):  # closed meanwhile: as good
                    await self._call(self.client.delete_share(track.id))
            if status.status != "COMPLETED":
                request = AssetUpdateRequest(
                    minimal_asset=self._minimal(track, md),
                    workstation=str(md.get("workstation_name", "")),
                    pipeline=str(md.get("pipeline_name", "")),
                    digitiser=md.get("digitiser") or None,
                )
                await self._call(self.client.complete_asset(request))
        except ArsUnavailable:
            return  # checked again at the next poll
        except ArsRejected as exc:
            await self._fail(track, "erda_sync", expect, str(exc), "confirm")
            return
        await self._synced(
            track, cause=f"confirm: ERDA sync {waited}, files found in ERDA; completed in ARS"
        )

    # ------------------------------------------------------------------ metadata

    async def _metadata(self, track: Track) -> None:
        seq = track.metadata_seq  # read before the metadata document: see `metadata_seq`
        expect = {"update_metadata": YES, "metadata_seq": seq}
        md = await self._metadata_or_fail(track, "update_metadata", expect, "metadata")
        if md is None:
            return
        try:
            await self._call(
                self.client.update_asset(to_ars_asset(md, update_user=self.update_user))
            )
        except ArsUnavailable as exc:
            await self._set(
                track, {"ars_not_before": self._backoff()}, expect=expect,
                cause=f"metadata: ARS unavailable ({exc.message})",
            )
            return
        except ArsRejected as exc:
            await self._fail(track, "update_metadata", expect, str(exc), "metadata")
            return
        done = await self._set(
            track, {"update_metadata": NO}, expect=expect, cause="metadata: pushed"
        )
        if not done:
            self._events["metadata"].set()  # changed meanwhile: push once more

