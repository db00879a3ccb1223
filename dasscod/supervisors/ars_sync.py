"""The ARS sync: keeps ARS in step with the track flags, one guarded transition at a time.

Six steps, each a loop over an indexed flag query, woken by `offer` (a subscriber of the track
store) and by a slow sweep. Each step is one record in `STEPS` (`Step`: its name, its store
query, what else wakes it, its handler, its busy key):

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

Throttles (the production values of docs/domain.md by default): create and reopen open a share only
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
from typing import Any, Literal, TypedDict, TypeVar

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
from dasscod.ars.mapping import to_ars_asset, to_minimal_asset
from dasscod.ars.models import AssetStatusInfo
from dasscod.ars.throttle import ShareBudget
from dasscod.log import get_logger
from dasscod.model import FileEntry, Flag, Track, utcnow
from dasscod.pipeline import Pipeline
from dasscod.queues import ArsFlag, FlagQuery, QueueField
from dasscod.settings import ArsSyncSettings
from dasscod.store import Stores
from dasscod.store.track import files_mb
from dasscod.watchdog import beat

log = get_logger(__name__)

T = TypeVar("T")

StepName = Literal["create", "reopen", "upload", "synchronise", "confirm", "metadata"]
BYTES_PER_MB = 1_000_000
#: The shortest gap between two status questions about one asset awaiting ERDA.
MIN_CONFIRM_GAP_S = 0.05
YES, NO, AWAIT, UPLOADING, ERROR = Flag.YES, Flag.NO, Flag.AWAIT, Flag.UPLOADING, Flag.ERROR
#: Every step leaves alone an asset that is not available for services (paused, say).
AVAILABLE: Mapping[QueueField, tuple[Flag, ...]] = {
    "available_for_services": (YES,)
}


class ArsFields(TypedDict, total=False):
    """The track fields the ARS sync writes and guards on: a misspelt one is a type error."""

    is_in_ars: Flag
    has_new_file: Flag
    has_open_share: Flag
    erda_sync: Flag
    update_metadata: Flag
    metadata_seq: int
    ars_error: str | None
    ars_not_before: datetime | None
    proxy_path: str
    file_list: list[FileEntry]
    erda_failures: int
    erda_timeouts: int
    erda_sync_since: datetime | None


@dataclass(frozen=True)
class Step:
    """One ARS sync step, as data: what it works on and what it runs."""

    name: StepName
    #: The assets it works on (the store's indexed query; also what a change must match to
    #: wake it).
    query: FlagQuery
    handler: Callable[[ArsSync, Track], Awaitable[None]]
    #: Besides a document its query matches, a change that may give it work elsewhere.
    also_wakes: Callable[[Track], bool] | None = None
    #: Work on the asset's metadata runs beside work on its files: its own busy key.
    metadata_side: bool = False
    #: Opens shares, so the share size caps hold it back.
    opens_shares: bool = False

    def wakes(self, track: Track) -> bool:
        return self.query.matches(track) or (
            self.also_wakes is not None and self.also_wakes(track)
        )

    def busy_key(self, guid: str) -> str:
        """What "this asset is being worked on" means for the step: another step with the
        same key leaves the asset alone until it is done."""
        return f"meta:{guid}" if self.metadata_side else guid


#: How the sync paces itself: the `[ars_sync]` settings, one declaration for the
#: configuration, the daemon, the tests and the bench.
SyncOptions = ArsSyncSettings
#: The defaults, as the daemon runs without an `[ars_sync]` section.
DEFAULT_OPTIONS = SyncOptions()


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


def wanted_steps(track: Track) -> list[StepName]:
    """The steps that may have work after a change to this document (what `offer` wakes)."""
    return [step.name for step in STEPS if step.wakes(track)]


def _pending_files(track: Track) -> bool:
    return any(not f.deleted and f.erda_sync is NO for f in track.file_list)


class ArsSync:
    def __init__(
        self,
        stores: Stores,
        client: ArsClient,
        *,
        stopping: anyio.Event,
        options: SyncOptions = DEFAULT_OPTIONS,
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
        self._events: dict[StepName, anyio.Event] = {s.name: anyio.Event() for s in STEPS}
        #: Work in progress in this process: guid (file side) or "meta:" + guid.
        self._busy: set[str] = set()
        self._limiter = anyio.CapacityLimiter(options.concurrency)
        #: When to ask about each asset awaiting ERDA.
        self.confirm_schedule = ConfirmSchedule(options.confirm_poll_s)
        #: Steps held back by a throttle now (logged once when it starts and when it ends).
        self._throttled: set[StepName] = set()
        self.update_user = client.settings.update_user

    # ------------------------------------------------------------------ wake-ups

    def offer(self, track: Track) -> None:
        for name in wanted_steps(track):
            self._events[name].set()

    def working_on(self, step: StepName, guid: str) -> bool:
        """Whether this process is at `step`'s side of the asset now (its busy key is held)."""
        return STEP[step].busy_key(guid) in self._busy

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

    async def _loop(self, step: Step) -> None:
        """One step's loop: a pass over its queue, then sleep until woken, a parked asset is
        due, or the sweep -- at once again after a full batch, which may have more."""
        while not self.stopping.is_set():
            beat(self._sweep_s(step))
            event = anyio.Event()
            self._events[step.name] = event  # armed before looking: no wake-up is missed
            if self.breaker.state is BreakerState.OPEN and self.breaker.remaining_s() > 0:
                wait = min(self._sweep_s(step), self.breaker.remaining_s() + 0.001)
            else:
                wait, more = await self._pass(step)
                if more:
                    continue
            if self.stopping.is_set():
                return
            beat(wait)
            with anyio.move_on_after(wait):
                await event.wait()

    def _sweep_s(self, step: Step) -> float:
        if step.name == "confirm":
            return min(self.options.sweep_s, self.options.confirm_poll_s)
        return self.options.sweep_s

    async def _pass(self, step: Step) -> tuple[float, bool]:
        """Work on what is due in one batch of the step's queue. Returns how long to wait for
        the next pass, and whether to look again at once (a full batch)."""
        now = utcnow()
        candidates = await self.stores.track.ars_queue(step.query, self.options.batch)
        polls = (self.confirm_schedule.next_polls(candidates, now)
                 if step.name == "confirm" else {})  # fmt: skip
        due = self._due_now(candidates, polls, now)
        wait = self._next_wake(step, candidates, polls, now)
        idle = {step.busy_key(t.id) for t in due} - self._busy  # work another step holds
        admitted = await self._admit(step, due)
        async with anyio.create_task_group() as tg:
            for track in admitted:
                tg.start_soon(self._one, step, track)
        full = len(candidates) >= self.options.batch
        return wait, bool(full and idle and step.name not in self._throttled)

    def _due_now(
        self, candidates: list[Track], polls: Mapping[str, datetime], now: datetime
    ) -> list[Track]:
        """The candidates to work on in this pass: not parked (or parked only by an outage
        that is over); while the breaker probes, the one parked longest; of those with a
        time to be asked about (`polls`, for `confirm`), only those whose time has come."""
        due = [t for t in candidates if self._due(t, now)]
        if not due and candidates and self.breaker.state is not BreakerState.CLOSED:
            # The cooldown is over: probe with the asset parked longest, rather than wait
            # until some asset's own backoff ends.
            due = [min(candidates, key=lambda t: t.ars_not_before or now)]
        return [t for t in due if polls.get(t.id, now) <= now]

    def _next_wake(
        self, step: Step, candidates: list[Track], polls: Mapping[str, datetime], now: datetime
    ) -> float:
        """Seconds until the next pass without a wake-up: the sweep, or sooner when a parked
        asset (or, for `confirm`, an asset's next question) is due."""
        later = [t.ars_not_before for t in candidates
                 if t.ars_not_before is not None and t.ars_not_before > now]  # fmt: skip
        later.extend(p for p in polls.values() if p > now)
        wait = self._sweep_s(step)
        if later:
            wait = min(wait, max(0.001, (min(later) - now).total_seconds()))
        return wait

    async def _one(self, step: Step, track: Track) -> None:
        key = step.busy_key(track.id)
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
                await step.handler(self, track)
            except Exception:
                # A store error or a bug with one asset must not stop the others.
                log.exception("ars sync step failed", step=step.name, asset_guid=track.id)
            finally:
                self._busy.discard(key)
                if probe:
                    self.breaker.release()

    async def _admit(self, step: Step, due: list[Track]) -> list[Track]:
        """The part of `due` the throttles let through in this pass."""
        o = self.options
        if step.name == "synchronise" and due:
            awaiting = await self.stores.track.count_flag("erda_sync", AWAIT)
            admitted = due[: max(0, o.max_awaiting_erda - awaiting)]
            self._note_throttle(step.name, len(admitted) < len(due), awaiting=awaiting)
            return admitted
        if not step.opens_shares or not due:
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
            if (step.name == "create" and t.is_in_ars is AWAIT)
            or budget.admit(self._allocation_mb(t), derivative=t.parent_guid is not None)
        ]
        self._note_throttle(step.name, len(admitted) < len(due), open_mb=round(budget.used_mb))
        return admitted

    def _note_throttle(self, step: StepName, held: bool, **state: int) -> None:
        if held and step not in self._throttled:
            self._throttled.add(step)
            log.info("ars sync throttled", step=step, **state)
        elif not held and step in self._throttled:
            self._throttled.discard(step)
            log.info("ars sync throttle released", step=step, **state)

    def _wake_throttled(self) -> None:
        """A share closed or a sync left AWAIT: room for the steps that were held back."""
        for step in STEPS:
            if step.opens_shares or step.name == "synchronise":
                self._events[step.name].set()

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
        self, track: Track, fields: ArsFields, expect: ArsFields, step: StepName
    ) -> Track | None:
        """Write the claim before the ARS call, guarded by `expect`: the claimed document, or
        None when another writer moved the asset first."""
        claim = await self.stores.track.apply(
            track.id, asset_fields=fields, expect=expect, known=track, cause=f"ars {step}: claimed"
        )
        return claim.track if claim.applied else None

    async def _set(self, track: Track, fields: ArsFields, *, expect: ArsFields, cause: str) -> bool:
        result = await self.stores.track.apply(
            track.id, asset_fields=fields, expect=expect, known=track, cause=f"ars {cause}"
        )
        return result.applied

    def _backoff(self) -> datetime:
        return utcnow() + timedelta(seconds=self.options.unavailable_backoff_s)

    async def _give_back(
        self, track: Track, flag: ArsFlag, claimed: Flag, back: Flag, exc: ArsUnavailable,
        step: StepName,
    ) -> None:
        fields: ArsFields = {"ars_not_before": self._backoff()}
        fields[flag] = back
        expect: ArsFields = {}
        expect[flag] = claimed
        await self._set(
            track, fields, expect=expect, cause=f"{step}: ARS unavailable ({exc.message})"
        )

    async def _fail(
        self, track: Track, flag: ArsFlag, expect: ArsFields, message: str, step: StepName
    ) -> None:
        log.error("ars refused", step=step, asset_guid=track.id, flag=flag, error=message)
        fields: ArsFields = {"ars_error": message}
        fields[flag] = ERROR
        await self._set(track, fields, expect=expect, cause=f"{step}: {message}")

    async def _claim_or_resume(
        self, track: Track, flag: ArsFlag, free: Flag, taken: Flag, step: StepName,
        also: ArsFields | None = None,
    ) -> Track | None:
        """Claim `step` (`flag`: `free` -> `taken`, while `also` holds), or take it up again
        when `flag` is already `taken` with nobody here at it: a crash mid-step, and the
        steps are repeatable. None when another writer moved the asset first."""
        if getattr(track, flag) is not free:
            return track
        fields: ArsFields = {}
        fields[flag] = taken
        expect: ArsFields = {**(also or {})}
        expect[flag] = free
        return await self._claim(track, fields, expect, step)

    async def _take_up(
        self, track: Track, flag: ArsFlag, free: Flag, taken: Flag, step: StepName,
        also: ArsFields | None = None,
    ) -> tuple[Track, dict[str, Any]] | None:
        """`_claim_or_resume`, then the asset's metadata (`_metadata_or_fail`): the claimed
        document and the metadata, or None when the step cannot go on."""
        claimed = await self._claim_or_resume(track, flag, free, taken, step, also)
        if claimed is None:
            return None
        expect: ArsFields = {}
        expect[flag] = taken
        md = await self._metadata_or_fail(claimed, flag, expect, step)
        return None if md is None else (claimed, md)

    async def _metadata_or_fail(
        self, track: Track, flag: ArsFlag, expect: ArsFields, step: StepName
    ) -> dict[str, Any] | None:
        """The asset's metadata document; without one the step fails (`flag` -> ERROR)."""
        md = await self.stores.metadata.get(track.id)
        if md is None:
            await self._fail(track, flag, expect, "no metadata", step)
        return md

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
        fields: ArsFields = {
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
        taken = await self._take_up(
            track, "has_open_share", NO, AWAIT, "reopen", also={"has_new_file": YES}
        )
        if taken is None:
            return
        track, md = taken
        expect: ArsFields = {"has_open_share": AWAIT}
        proxy_path = ""
        try:
            info = await self._call(
                self.client.create_share(
                    _minimal(track, md), allocation_mb=self._allocation_mb(track)
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
        fields: ArsFields = {
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
        taken = await self._take_up(track, "has_new_file", YES, UPLOADING, "upload")
        if taken is None:
            return
        track, md = taken
        expect: ArsFields = {"has_new_file": UPLOADING}
        minimal = _minimal(track, md)
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
        expect: ArsFields = {"erda_sync": AWAIT}
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
        expect: ArsFields = {"erda_sync": AWAIT}
        self.confirm_schedule.asked(track.id, utcnow())
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
        expect: ArsFields = {"erda_sync": AWAIT}
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
                    minimal_asset=_minimal(track, md),
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
        expect: ArsFields = {"update_metadata": YES, "metadata_seq": seq}
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



class ConfirmSchedule:
    """When to ask next about each asset awaiting ERDA: at once, then at gaps growing with
    the sync's age up to `confirm_poll_s`, so that a quick sync is confirmed quickly (and
    frees its place under `max_awaiting_erda`) while a slow one costs few calls."""

    def __init__(self, confirm_poll_s: float) -> None:
        self.confirm_poll_s = confirm_poll_s
        #: When each asset awaiting ERDA was last asked about in this process.
        self._asked: dict[str, datetime] = {}

    def asked(self, guid: str, at: datetime) -> None:
        self._asked[guid] = at

    def __contains__(self, guid: object) -> bool:
        return guid in self._asked

    def next_polls(self, awaiting: list[Track], now: datetime) -> dict[str, datetime]:
        """When to ask about each of `awaiting` (the assets awaiting ERDA now); forgets the
        assets no longer among them."""
        self._asked = {t.id: self._asked[t.id] for t in awaiting if t.id in self._asked}
        polls = {}
        for track in awaiting:
            last = self._asked.get(track.id)
            since = track.erda_sync_since
            if last is None or since is None:
                polls[track.id] = now  # not asked yet (in this process): ask now
                continue
            age_s = (last - since).total_seconds()
            gap_s = min(self.confirm_poll_s, max(MIN_CONFIRM_GAP_S, age_s / 2))
            polls[track.id] = last + timedelta(seconds=gap_s)
        return polls


#: The steps, in the order the module docstring describes them.
STEPS: tuple[Step, ...] = (
    Step(
        "create",
        FlagQuery("is_in_ars", (NO, AWAIT), AVAILABLE),
        ArsSync._create,
        # A parent's files arrived: its derivatives may go into ARS now.
        also_wakes=lambda track: track.has_new_file is AWAIT,
        opens_shares=True,
    ),
    Step(
        "reopen",
        FlagQuery("has_new_file", (YES,),
                  {"is_in_ars": (YES,), "has_open_share": (NO, AWAIT), **AVAILABLE}),
        ArsSync._reopen,
        opens_shares=True,
    ),
    Step(
        "upload",
        FlagQuery("has_new_file", (YES, UPLOADING),
                  {"is_in_ars": (YES,), "has_open_share": (YES,), **AVAILABLE}),
        ArsSync._upload,
    ),
    Step(
        "synchronise",
        FlagQuery("has_new_file", (AWAIT,), {"erda_sync": (NO,), "is_in_ars": (YES,), **AVAILABLE}),
        ArsSync._synchronise,
    ),
    Step("confirm", FlagQuery("erda_sync", (AWAIT,), AVAILABLE), ArsSync._confirm),
    Step(
        "metadata",
        FlagQuery("update_metadata", (YES,), {"is_in_ars": (YES,), **AVAILABLE}),
        ArsSync._metadata,
        metadata_side=True,
    ),
)  # fmt: skip
STEP: dict[StepName, Step] = {step.name: step for step in STEPS}


def _minimal(track: Track, md: Mapping[str, Any]) -> MinimalAsset:
    return to_minimal_asset(md, asset_guid=track.id, parent_guid=track.parent_guid)
