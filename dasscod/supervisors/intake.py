"""Intake: take new assets from the intake folder into the daemon.

The delivery format (one sub-folder per asset: a metadata JSON, its image files, an optional
`.ready` marker) is described in `dasscod.delivery`.

Taking a delivery, in this order, so that a crash at any point loses nothing and duplicates
nothing:

1. read and check it where it lies (metadata, pipeline, files, sizes, CRC-32), and check that
   its asset is not registered yet;
2. move the folder to `<work_area>/<asset_guid>` with one rename (atomic: the work area must be
   on the same file system as the intake folder);
3. insert the metadata document (a duplicate with the same content is fine: an earlier attempt
   got this far);
4. insert the track document, last: a track's existence marks the take as complete.

A folder in the work area without a track document is therefore an interrupted take:
`recover()` (at start) checks it again and finishes steps 3 and 4, or quarantines it.

A delivery that cannot be taken is moved to `<quarantine>/<name>-<UTC time>/` with a
`REASON.txt` (`dasscod.quarantine`: never written through a link or into a FIFO; a symlinked
delivery folder is quarantined as a link, inside a fresh folder, next to its reason).
MongoDB being unreachable is not the delivery's fault: the delivery stays where it is and the
next scan tries again. Nothing a delivery contains can end the loop.
"""

from __future__ import annotations

import bisect
import os
import shutil
import stat
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from anyio import to_thread
from pymongo.errors import PyMongoError

from dasscod import metrics
from dasscod.delivery import (
    BYTES_PER_MB,
    MAX_ENTRIES,
    READY_MARKER,
    REASON_FILE,
    Delivery,
    DeliveryChanged,
    DeliveryRejected,
    SettleTracker,
    read_delivery,
    snapshot,
    verify_unchanged,
)
from dasscod.holds import Holds
from dasscod.log import get_logger
from dasscod.model import Flag, Metadata, Track, as_utc, utcnow
from dasscod.pipeline import Pipeline
from dasscod.quarantine import move_to_quarantine
from dasscod.settings import IntakeSettings
from dasscod.store import AssetExists, Stores
from dasscod.store.codec import to_bson
from dasscod.store.errors import describe, is_fatal
from dasscod.store.fence import NotLeader
from dasscod.watchdog import beat

log = get_logger(__name__)

#: Errors that say nothing about the delivery: any MongoDB error (unreachable, a timeout,
#: disk full, not authorised: dasscod.store.errors), or this daemon no longer leading. The
#: delivery stays where it is; a fatal one (authentication) then stops the daemon.
TRANSIENT: tuple[type[Exception], ...] = (PyMongoError, NotLeader)

#: Where API deliveries are written before they are taken (inside the work area).
STAGING = ".incoming"

#: Entries of delivery folders one scan looks at (listing and stat): with more waiting, the
#: next scan goes on after the last folder looked at, so every one has its turn and a scan
#: stays short however many deliveries are waiting.
SCAN_BUDGET = 20_000

#: A delivery that could not be quarantined (a full disk, a quarantine folder it may not
#: write) is left in place and tried again after this long, not read again every scan.
QUARANTINE_RETRY_S = 60.0

#: Work-area folders checked against the store per query during recovery.
RECOVERY_BATCH = 500



@dataclass
class _Item:
    """Where a delivery is right now (it moves from the intake folder to the work area)."""

    path: Path


@dataclass(frozen=True)
class _Candidate:
    """An entry of the intake folder, as one scan found it."""

    name: str
    ready: bool
    #: A fingerprint of what the entry holds (settling compares it), None if it could not be
    #: listed completely just now.
    snap: int | None
    #: Why it cannot be taken, known from the listing alone (a link, a loose file, a folder
    #: too large or unreadable to list): it is quarantined without being read.
    problem: DeliveryRejected | None = None
    #: The problem waits until the entry has settled (a loose file may still be copied in).
    settle_first: bool = False
    #: Entries looked at to find it (the scan's budget).
    cost: int = 0


class IntakeSupervisor:
    """Watches `settings.folder` and turns each complete delivery into a tracked asset.

    `on_new` is called with each new track after it was inserted. `TrackStore.insert` already
    reports every new track to the store's subscribers, so pass `on_new` only for what that does
    not cover (the daemon relies on its subscription).
    """

    def __init__(
        self,
        settings: IntakeSettings,
        stores: Stores,
        pipelines: Mapping[str, Pipeline],
        *,
        on_new: Callable[[Track], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        holds: Holds | None = None,
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.pipelines = pipelines
        self.on_new = on_new
        self.folder = settings.folder.absolute()
        self.work_area = settings.work_area.absolute()
        self.quarantine = settings.quarantine.absolute()
        self._clock = clock
        self._settle = SettleTracker(settings.settle_s)
        #: Work-area folders whose registration (steps 3-4) was interrupted by MongoDB.
        self._unfinished: set[Path] = set()
        self._recovery_pending = False
        self._mongo_down = False
        #: The last problem logged per folder, so a persisting one is not logged every scan.
        self._reported: dict[str, str] = {}
        #: Guids being taken right now (from the folder or the API): a second delivery of
        #: one of them waits for the first to be registered or refused.
        self._taking: set[str] = set()
        #: Intake-folder deliveries that changed while they were read: they are taken only
        #: once they have settled, `.ready` or not.
        self._changing: set[str] = set()
        self._max_bytes = int(settings.max_delivery_mb * BYTES_PER_MB)
        #: Intake-folder deliveries whose quarantine failed, and when to try again.
        self._retry_at: dict[str, float] = {}
        #: The last intake-folder entry the previous scan looked at ("": start at the top).
        self._cursor = ""
        #: An operator's pause of intake, or the drain: deliveries wait where they are.
        self.holds = holds if holds is not None else Holds()

    def held(self) -> str | None:
        """Why intake takes no delivery now (None: it takes them)."""
        hold = self.holds.intake_held()
        if hold is None:
            return None
        what = "the daemon is draining" if hold.kind == "drain" else "intake is paused"
        return f"{what} ({hold.describe()})"

    # ------------------------------------------------------------------ loop

    async def run(self, stopping: anyio.Event | None = None) -> None:
        """Scan every `poll_s` until `stopping` is set; a take in progress is finished first."""
        await self.recover()
        stop = stopping or anyio.Event()
        while not stop.is_set():
            await self.scan_once()
            beat(self.settings.poll_s)
            with anyio.move_on_after(self.settings.poll_s):
                await stop.wait()

    async def scan_once(self) -> int:
        """Take every eligible delivery; returns how many assets were registered (including
        interrupted takes finished now). Never raises for anything a delivery contains."""
        taken = 0
        try:
            if self._recovery_pending:
                taken += await self.recover()
                if self._recovery_pending:
                    return taken
            for target in sorted(self._unfinished):
                if not await to_thread.run_sync(target.is_dir):
                    self._unfinished.discard(target)
                    continue
                if await self._process(_Item(target), self._finish):
                    taken += 1
            try:
                candidates, names = await to_thread.run_sync(self._list_intake)
            except OSError as exc:
                self._report(
                    str(self.folder),
                    "intake folder cannot be read",
                    folder=str(self.folder),
                    error=str(exc),
                )
                return taken
            self._reported.pop(str(self.folder), None)
            if self.held():
                return taken  # an interrupted take above was finished; nothing new is taken
            now = self._clock()
            self._settle.retain(names)
            self._changing &= names
            self._retry_at = {k: t for k, t in self._retry_at.items() if k in names}
            self._forget_reports(names)
            for candidate in candidates:
                name, problem = candidate.name, candidate.problem
                if self._retry_at.get(name, now) > now:
                    continue  # its quarantine failed a moment ago (logged); tried again soon
                if problem is not None and not candidate.settle_first:
                    await self._quarantine(self.folder / name, problem.reason, hint=problem.hint)
                    continue
                ready = candidate.ready and name not in self._changing
                if not (ready or self._settle.settled(name, candidate.snap, now)):
                    continue
                self._changing.discard(name)
                if problem is not None:
                    await self._quarantine(self.folder / name, problem.reason, hint=problem.hint)
                elif await self._process(_Item(self.folder / name), self._take):
                    taken += 1
        except TRANSIENT as exc:
            if is_fatal(exc):
                raise
            if not self._mongo_down:
                log.warning(
                    "MongoDB failed; deliveries wait for the next scan", error=describe(exc)
                )
                self._mongo_down = True
            return taken
        if self._mongo_down:
            log.info("MongoDB reachable again; intake goes on")
            self._mongo_down = False
        return taken

    async def recover(self) -> int:
        """Finish every take that a crash interrupted: a work-area folder without a track
        document. Returns how many were registered. Called once at start (and again by the
        next scan if MongoDB was unreachable)."""
        self._recovery_pending = False
        try:
            names = await to_thread.run_sync(self._prepare_folders)
        except OSError as exc:
            self._report(
                "recover",
                "intake folders cannot be used",
                error=str(exc),
                folder=str(self.folder),
                work_area=str(self.work_area),
                quarantine=str(self.quarantine),
            )
            self._recovery_pending = True
            return 0
        self._reported.pop("recover", None)
        completed = 0
        try:
            for chunk in _chunks(names, RECOVERY_BATCH):
                tracked = {track.id for track in await self.stores.track.find(chunk)}
                for name in chunk:
                    if name in tracked:
                        continue
                    target = self.work_area / name
                    self._unfinished.add(target)
                    log.info("finishing an interrupted intake", folder=str(target))
                    if await self._process(_Item(target), self._finish):
                        completed += 1
        except TRANSIENT as exc:
            if is_fatal(exc):
                raise
            self._recovery_pending = True
            if not self._mongo_down:
                log.warning("MongoDB failed; intake recovery waits", error=describe(exc))
                self._mongo_down = True
        return completed

    # ------------------------------------------------------------------ the intake API

    def staging_folder(self) -> Path:
        """A fresh folder for an API delivery, on the work area's file system (so that taking
        it is one rename) and hidden from recovery (its name starts with a dot)."""
        folder = self.work_area / STAGING / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    async def accept(self, staged: Path) -> Track:
        """Take an asset delivered through the API and staged in `staged`: the same checks and
        the same result as a folder delivery, but a problem is raised to the caller
        (DeliveryRejected, AssetExists) instead of quarantined, and nothing is kept."""
        guid: str | None = None
        try:
            try:
                delivery = await to_thread.run_sync(self._read, staged)
                guid = delivery.guid
                if guid in self._taking:  # two uploads of one guid: the second waits for none
                    guid = None
                    raise AssetExists(f"asset {delivery.guid} is being registered right now")
                self._taking.add(guid)
                target = self.work_area / guid
                if (await self.stores.track.get(guid) is not None
                        or await to_thread.run_sync(target.exists)):
                    raise AssetExists(f"asset {guid} is already registered")
                await to_thread.run_sync(_move_into_place, staged, target)
            finally:
                if await to_thread.run_sync(staged.exists):
                    await to_thread.run_sync(shutil.rmtree, staged, True)
            item = _Item(target)
            self._unfinished.add(target)
            if not await self._register(item, delivery, source="intake API"):
                raise AssetExists(f"asset {guid} is already registered")
        finally:
            if guid is not None:
                self._taking.discard(guid)
        track = await self.stores.track.get(guid)
        assert track is not None
        return track

    # ------------------------------------------------------------------ one delivery

    async def _process(self, item: _Item, step: Callable[[_Item], Awaitable[bool]]) -> bool:
        """Run `step` on one delivery. A rejection or an unexpected error quarantines the
        delivery wherever it is now; MongoDB being unreachable propagates (nothing moves)."""
        try:
            return await step(item)
        except TRANSIENT:
            raise
        except DeliveryChanged as exc:
            if item.path.parent != self.folder:
                await self._quarantine(item.path, exc.reason, hint=exc.hint)
                return False
            # Still being written (or rewritten): it waits until it has settled.
            self._changing.add(item.path.name)
            self._settle.forget(item.path.name)
            self._report(str(item.path), "delivery changed while it was read; it is taken "
                         "once it has settled", level="warning", folder=str(item.path),
                         reason=exc.reason)
        except DeliveryRejected as exc:
            await self._quarantine(item.path, exc.reason, hint=exc.hint)
        except Exception as exc:
            log.exception("unexpected error while taking a delivery", folder=str(item.path))
            await self._quarantine(
                item.path,
                f"unexpected error while taking it: {type(exc).__name__}: {exc}",
                hint="The daemon's log has the details. If the problem was not in the delivery, "
                "move the folder back into the intake folder as it is.",
            )
        return False

    async def _take(self, item: _Item) -> bool:
        """Steps 1-4 for a delivery in the intake folder."""
        delivery = await to_thread.run_sync(self._read, item.path)
        guid = delivery.guid
        if guid in self._taking:
            return False  # the API is taking it; the next scan finds it registered (or not)
        self._taking.add(guid)
        try:
            if await self.stores.track.get(guid) is not None:
                raise _already_registered(guid)
            target = self.work_area / guid
            if await to_thread.run_sync(target.exists):
                # An earlier take of this asset was interrupted after its move: finish that
                # one first; this delivery is then a second copy of a registered asset.
                self._unfinished.add(target)
                if await self._process(_Item(target), self._finish):
                    raise _already_registered(guid)
                if await to_thread.run_sync(target.exists):
                    return False  # it could not be quarantined either; logged, retried
            source = item.path
            await to_thread.run_sync(_move_into_place, source, target)
            item.path = target
            self._unfinished.add(target)
            self._reported.pop(str(source), None)
            # What was checksummed must be what was moved: nothing written or swapped since.
            await to_thread.run_sync(verify_unchanged, delivery, target)
            return await self._register(item, delivery, source=str(source))
        finally:
            self._taking.discard(guid)

    async def _finish(self, item: _Item) -> bool:
        """Steps 3-4 for a work-area folder whose take was interrupted."""
        if await self.stores.track.get(item.path.name) is not None:
            self._unfinished.discard(item.path)  # it was complete after all
            return False
        delivery = await to_thread.run_sync(self._read, item.path)
        if delivery.guid != item.path.name:
            raise DeliveryRejected(
                f"the work-area folder {item.path.name} holds asset {delivery.guid}: "
                "a work-area folder must be named after its asset_guid"
            )
        return await self._register(item, delivery, source=str(item.path))

    async def _register(self, item: _Item, delivery: Delivery, *, source: str) -> bool:
        """Steps 3 and 4; the delivery's folder is already at `item.path` in the work area."""
        metadata = delivery.metadata
        guid = metadata.asset_guid
        pipeline = self.pipelines[metadata.pipeline_name]
        try:
            await self.stores.metadata.insert(metadata)
        except AssetExists:
            existing = await self.stores.metadata.get(guid)
            if existing is None:
                await self.stores.metadata.insert(metadata)
            elif not same_metadata(existing, metadata):
                raise DeliveryRejected(
                    f"a metadata document for asset {guid} already exists and differs from "
                    "this delivery's metadata",
                    hint="An operator must check the stored metadata document of this asset "
                    "(it has no track document) and remove it if it is stale; then move the "
                    "folder back into the intake folder.",
                ) from None
        track = Track.model_validate(
            {
                "_id": guid,
                "pipeline": pipeline.name,
                "job_list": pipeline.initial_jobs(),
                "batch_list_name": metadata.batch_list_name,
                "asset_size": delivery.asset_size,
                "file_list": delivery.file_entries,
                "parent_guid": metadata.parent_guid,
                "temporary_files_local": Flag.YES,
                "temporary_path_local": str(item.path),
            }
        )
        try:
            track = await self.stores.track.insert(track)
        except AssetExists:
            # Written by someone else between our check and now: the asset is registered.
            log.warning("asset registered meanwhile by another writer", asset_guid=guid)
            self._unfinished.discard(item.path)
            return False
        self._unfinished.discard(item.path)
        log.bind(asset_guid=guid).info(
            "asset taken",
            files=len(delivery.files),
            size_mb=round(delivery.asset_size, 6),
            pipeline=pipeline.name,
            source=source,
            path=str(item.path),
        )
        if self.on_new is not None:
            try:
                self.on_new(track)
            except Exception:
                log.exception("on_new callback failed", asset_guid=guid)
        return True

    async def _quarantine(self, path: Path, reason: str, *, hint: str | None = None) -> None:
        """Move `path` to the quarantine folder with a REASON.txt; on failure log (once) and
        leave it where it is."""
        now = utcnow()
        if not await to_thread.run_sync(os.path.lexists, path):
            # Renamed or removed by its producer since it was listed: nothing to move, and
            # nothing was taken (a renamed one is found again under its new name).
            log.info("delivery vanished before it was taken", folder=str(path), reason=reason)
            self._unfinished.discard(path)
            self._settle.forget(path.name)
            return
        try:
            dest = await to_thread.run_sync(
                move_to_quarantine,
                path,
                self.quarantine,
                _reason_text(reason, hint=hint, source=path, intake=self.folder, at=now),
                now,
            )
        except Exception as exc:  # anything: a delivery must never end the loop
            self._report(
                str(path),
                "delivery could not be quarantined; left in place",
                folder=str(path),
                reason=reason,
                error=str(exc),
            )
            if path.parent == self.folder:  # not read (and checksummed) again every scan
                self._retry_at[path.name] = self._clock() + QUARANTINE_RETRY_S
            return
        self._retry_at.pop(path.name, None)
        self._reported.pop(str(path), None)
        self._unfinished.discard(path)
        self._settle.forget(path.name)
        metrics.INTAKE_QUARANTINED.inc()
        log.warning("delivery quarantined", folder=str(path), quarantine=str(dest), reason=reason)

    # ------------------------------------------------------------------ blocking helpers

    def _prepare_folders(self) -> list[str]:
        """Create the folders; return the names of the work area's asset folders."""
        for folder in (self.folder, self.work_area, self.quarantine):
            folder.mkdir(parents=True, exist_ok=True)
        device = self.folder.stat().st_dev
        for other in (self.work_area, self.quarantine):
            if other.stat().st_dev != device:
                log.error(
                    "intake folder and this folder are on different file systems; deliveries "
                    "cannot be moved there atomically",
                    folder=str(self.folder),
                    other=str(other),
                )
        _drop_stale_uploads(self.work_area / STAGING)
        with os.scandir(self.work_area) as listing:
            return sorted(
                entry.name
                for entry in listing
                if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")
            )

    def _read(self, folder: Path) -> Delivery:
        """Read and check a delivery (in a worker thread): every chunk checksummed is the
        intake's heartbeat, so a large delivery is progress and a hung read is not."""
        return read_delivery(folder, self.pipelines.keys(), max_bytes=self._max_bytes,
                             progress=self._beat)

    def _beat(self) -> None:
        beat(self.settings.poll_s)

    def _list_intake(self) -> tuple[list[_Candidate], set[str]]:
        """The entries of the intake folder this scan looks at (not dot entries, empty folders
        or the daemon's own folders), at most SCAN_BUDGET entries of delivery folders from
        where the last scan stopped; and the names of everything in the intake folder."""
        found: list[_Candidate] = []
        own = {self.work_area, self.quarantine}
        with os.scandir(self.folder) as listing:
            entries = sorted((e for e in listing
                              if not e.name.startswith(".") and Path(e.path) not in own),
                             key=lambda e: e.name)
        names = {e.name for e in entries}
        start = bisect.bisect_right([e.name for e in entries], self._cursor)
        budget = SCAN_BUDGET
        self._cursor = ""  # unless the budget runs out below
        for entry in entries[start:] + entries[:start]:
            if budget <= 0:
                break
            budget -= 1
            self._cursor = entry.name
            self._beat()
            candidate = self._look_at(entry)
            if candidate is not None:
                found.append(candidate)
                budget -= candidate.cost
        else:
            self._cursor = ""  # everything was looked at: the next scan starts at the top
        return found, names

    def _look_at(self, entry: os.DirEntry[str]) -> _Candidate | None:
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None  # gone since it was listed
        if stat.S_ISLNK(info.st_mode):
            return _Candidate(entry.name, False, None, DeliveryRejected(
                "the delivery folder is a symbolic link; intake takes only real "
                "folders (it never follows a link out of the intake folder)",
                hint=f"Move or copy the folder itself into the intake folder "
                f"{self.folder}; this quarantine folder holds only the link."))
        if not stat.S_ISDIR(info.st_mode):
            regular = stat.S_ISREG(info.st_mode)
            what = "a file" if regular else "not a folder (a FIFO, socket or device)"
            # A loose file may still be being copied in: it is moved once it has settled.
            return _Candidate(
                entry.name, False, hash((info.st_size, info.st_mtime_ns)),
                DeliveryRejected(
                    f"{entry.name} is {what}, not a delivery folder: intake takes one "
                    "folder per asset",
                    hint="Put the asset's metadata file and image files in a folder of "
                    f"their own inside the intake folder {self.folder}; this quarantine "
                    "folder holds the entry as it was found."),
                settle_first=regular)
        try:
            snap = snapshot(Path(entry.path))
        except DeliveryRejected as exc:
            return _Candidate(entry.name, False, None, exc, cost=MAX_ENTRIES)
        if snap == ():
            return None  # an empty folder: a delivery that has not started yet
        if snap is None:
            return _Candidate(entry.name, False, None)
        ready = any(e[0] == READY_MARKER for e in snap)
        return _Candidate(entry.name, ready, hash(snap), cost=len(snap))

    def _forget_reports(self, names: set[str]) -> None:
        """Drop the logged problems of intake-folder entries that are gone (bounded memory
        however many names come and go)."""
        prefix = str(self.folder) + os.sep
        for key in [k for k in self._reported
                    if k.startswith(prefix) and k[len(prefix):] not in names]:
            del self._reported[key]

    def _report(self, key: str, event: str, *, level: str = "error", **fields: Any) -> None:
        text = repr((event, sorted(fields.items())))
        if self._reported.get(key) == text:
            return
        self._reported[key] = text
        if level == "warning":
            log.warning(event, **fields)
        else:
            log.error(event, **fields)


def same_metadata(stored: Mapping[str, Any], metadata: Metadata) -> bool:
    """Whether a stored metadata document holds `metadata` (as `MetadataStore.insert` wrote it;
    BSON keeps times in UTC to the millisecond)."""
    ours = _comparable(to_bson(metadata.model_dump()))
    theirs = _comparable({k: v for k, v in stored.items() if k not in ("_id", "metadata_version")})
    return bool(ours == theirs)


def _comparable(value: Any) -> Any:
    if isinstance(value, datetime):
        aware = as_utc(value).astimezone(UTC)
        return aware.replace(microsecond=aware.microsecond // 1000 * 1000)
    if isinstance(value, Mapping):
        return {str(k): _comparable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_comparable(v) for v in value]
    return value


def _already_registered(guid: str) -> DeliveryRejected:
    return DeliveryRejected(
        f"asset {guid} is already registered",
        hint="If this is the same asset delivered again, nothing needs to be done: delete this "
        "folder. If it is a different asset, give it its own asset_guid and deliver it again.",
    )


def _drop_stale_uploads(staging: Path, max_age_s: float = 3600.0) -> None:
    """API uploads cut off by a crash: their clients got no answer and send again."""
    if not staging.is_dir():
        return
    cutoff = time.time() - max_age_s
    for entry in staging.iterdir():
        if entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)


def _move_into_place(source: Path, target: Path) -> None:
    """Step 2: one rename. A stale REASON.txt from an earlier quarantine is dropped first."""
    (source / REASON_FILE).unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # a rename onto an empty folder would succeed silently
        raise FileExistsError(f"{target} already exists")
    source.rename(target)


def _reason_text(reason: str, *, hint: str | None, source: Path, intake: Path, at: datetime) -> str:
    todo = hint or (
        f"Fix the problem, then move this folder back into the intake folder {intake} "
        f"(this file is ignored there; you may delete it). Add an empty file named "
        f"{READY_MARKER} to have it taken at once."
    )
    return (
        "dasscod did not take this delivery.\n\n"
        f"Reason: {reason}\n\n"
        f"What to do: {todo}\n\n"
        f"Delivered as: {source}\n"
        f"Quarantined at: {at.isoformat(timespec='seconds')}\n"
    )


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
