"""The `track` collection: every job transition is one guarded `update_one`.

The guard is the document's `version`: a transition is planned on the version it read and is
written only if the stored document is still that version (compare-and-set). A lost race
re-reads and re-plans, so the losing event is either applied on top of the winner's change or
found to be a no-op by the state machine; nothing is ever overwritten blindly.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from dasscod import metrics
from dasscod.log import get_logger
from dasscod.model import FileEntry, Flag, HistoryEntry, JobStatus, Track, as_utc, utcnow
from dasscod.pipeline import JobEvent, Pipeline, RetryPolicy, derive, new_track_fields, plan
from dasscod.queues import (
    HOLDS_FILES,
    IN_FLIGHT,
    PAUSED,
    ArsFlag,
    FlagQuery,
    agent_cleanup_tag,
    flag_tag,
    on_cluster,
)
from dasscod.store.codec import to_bson

log = get_logger(__name__)

#: Every query the daemon runs on `track` has an index here.
TRACK_INDEXES = [
    IndexModel([("ready", ASCENDING), ("ready_since", ASCENDING)], name="ready_queue"),
    IndexModel([("retry_due", ASCENDING)], name="retry_due", sparse=True),
    # The supervisors' other queues: in flight, on a cluster, paused, the ARS sync's steps.
    IndexModel([("queues", ASCENDING)], name="queues"),
    # Set by a reported file outside the planned transitions, so not among the tags.
    IndexModel([("has_new_file", ASCENDING)], name="has_new_file"),
]
#: Conflicts in a row before a transition gives up; each one means another writer made
#: progress on the same asset, so this only trips on a pathological storm.
MAX_CONFLICTS = 20

#: Documents this process wrote last, by guid. A transition planned on one of them saves the
#: read; if another writer got there first the version guard fails and the store re-reads, so
#: a stale entry costs one round trip and is never written over anything.
RECENT_TRACKS = 1024


#: Job statuses that end an attempt (its run time is known).
_ATTEMPT_ENDS = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.RETRY, JobStatus.ERROR,
                           JobStatus.CRITICAL_ERROR})
_ERRORS = frozenset({JobStatus.ERROR, JobStatus.CRITICAL_ERROR})


def _report_transition(guid: str, entry: HistoryEntry, old: Track, new: Track) -> None:
    """Log one written transition (a job ERROR at error level, with its reason) and count it
    in the metrics: the transition, the attempt's queue wait and run time, and how long the
    job waited to be claimed."""
    fields = {"asset_guid": guid, "job": entry.job, "attempt": entry.attempt,
              "cluster": entry.cluster, "from_": entry.from_, "to": entry.to,
              "cause": entry.cause}
    if entry.job is not None and entry.to in _ERRORS:
        job = new.job(entry.job)
        log.error("job failed for good: the asset waits for an operator",
                  error=entry.error or job.last_error or entry.cause, **fields)
    else:
        log.info("transition", **fields)
    if entry.job is None:
        return
    metrics.TRANSITIONS.labels(job=entry.job, to=entry.to).inc()
    job = new.job(entry.job)
    cluster = job.cluster or ""
    if entry.to == JobStatus.STARTING and old.ready_since is not None:
        metrics.observe_seconds(metrics.DISPATCH_LATENCY,
                                (entry.at - as_utc(old.ready_since)).total_seconds())
    elif entry.to == JobStatus.RUNNING and job.job_start_time and job.job_queued_time:
        metrics.observe_seconds(
            metrics.JOB_QUEUE_WAIT,
            (as_utc(job.job_start_time) - as_utc(job.job_queued_time)).total_seconds(),
            job=entry.job, cluster=cluster)
    elif entry.to in _ATTEMPT_ENDS and job.job_start_time and job.job_end_time:
        metrics.observe_seconds(
            metrics.JOB_DURATION,
            (as_utc(job.job_end_time) - as_utc(job.job_start_time)).total_seconds(),
            job=entry.job, cluster=cluster)


def files_mb(doc: Mapping[str, Any]) -> float:
    """An asset's size in MB: its files, or the size estimated before they were reported."""
    listed = sum(
        float(f.get("file_size") or 0.0) for f in doc.get("file_list", []) if not f.get("deleted")
    )
    return max(listed, float(doc.get("asset_size") or 0.0), 0.0)


class AssetNotFound(LookupError):
    pass


class AssetExists(ValueError):
    pass


class TransitionConflict(RuntimeError):
    pass


@dataclass
class Applied:
    """The result of one transition: whether it was written, the document after it, and the
    events the state machine ignored (duplicates, stale attempts, illegal moves)."""

    applied: bool
    track: Track
    ignored: list[str] = field(default_factory=list)


class TrackStore:
    def __init__(
        self,
        collection: AsyncCollection[dict[str, Any]],
        pipelines: Mapping[str, Pipeline],
        *,
        policy: RetryPolicy = RetryPolicy(),
    ) -> None:
        self.collection = collection
        self.pipelines = pipelines
        self.policy = policy
        #: Told every document this process writes (see `subscribe`).
        self._subscribers: list[Callable[[Track], None]] = []
        self._recent: OrderedDict[str, Track] = OrderedDict()
        #: guid -> (lock, holders and waiters): one write at a time per asset in this process.
        self._writers: dict[str, tuple[anyio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def _one_writer(self, guid: str) -> AsyncIterator[None]:
        """Writes of this process to one asset take turns: the second plans on the document
        the first wrote (remembered), instead of losing the version race to it and paying a
        failed update and a re-read. Different assets are written concurrently."""
        lock, users = self._writers.setdefault(guid, (anyio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._writers[guid]

    def pipeline_of(self, track: Track) -> Pipeline | None:
        return self.pipelines.get(track.pipeline)

    async def get(self, guid: str, *, recent_ok: bool = False) -> Track | None:
        """The asset's document; with `recent_ok`, the copy this process last wrote if it has
        one (callers must tolerate it being stale: guarded writes do, decisions may not)."""
        if recent_ok and (known := self._recent.get(guid)) is not None:
            return known
        doc = await self.collection.find_one({"_id": guid})
        return Track.model_validate(doc) if doc else None

    def _remember(self, track: Track) -> None:
        self._recent[track.id] = track
        self._recent.move_to_end(track.id)
        while len(self._recent) > RECENT_TRACKS:
            self._recent.popitem(last=False)

    async def insert(self, track: Track) -> Track:
        """Create an asset's track document, derived fields filled in."""
        complete = new_track_fields(track, self.pipeline_of(track), utcnow())
        try:
            await self.collection.insert_one(to_bson(complete.to_document()))
        except DuplicateKeyError as exc:
            raise AssetExists(f"asset {track.id} is already tracked") from exc
        self._remember(complete)
        self._notify(complete)
        return complete

    async def apply(
        self,
        guid: str,
        events: Sequence[JobEvent] = (),
        *,
        cause: str,
        asset_fields: Mapping[str, Any] | None = None,
        known: Track | None = None,
        now: datetime | None = None,
        expect: Mapping[str, Any] | None = None,
        by: str | None = None,
        reason: str | None = None,
    ) -> Applied:
        """Apply job events and asset field changes as one guarded write.

        `known` is a document the caller already read (saves a round trip); if it is stale the
        write's guard fails and the store re-reads. `expect` makes the transition conditional:
        it is written only while these fields hold these values (checked on a fresh read, and
        guarded by the version), otherwise nothing is written and `applied` is False.
        `by` and `reason` (an operator's action) go into the history entries it writes.
        """
        async with self._one_writer(guid):
            current = known
            cached = self._recent.get(guid)
            if cached is not None and (current is None or cached.version > current.version):
                current = cached
            fresh = False  # whether `current` was read from the store in this call
            for _ in range(MAX_CONFLICTS):
                if current is None:
                    current = await self.get(guid)
                    if current is None:
                        raise AssetNotFound(f"no asset {guid}")
                    fresh = True
                if expect and any(getattr(current, k, None) != v for k, v in expect.items()):
                    if not fresh:
                        self._recent.pop(guid, None)
                        current = None
                        continue
                    reason = "expected " + ", ".join(f"{k}={v}" for k, v in expect.items())
                    return Applied(False, current, [reason])
                result = plan(
                    current,
                    events,
                    pipeline=self.pipeline_of(current),
                    now=now or utcnow(),
                    cause=cause,
                    asset_fields=asset_fields,
                    policy=self.policy,
                    by=by,
                    reason=reason,
                )
                if not result.changed and not fresh:
                    # A no-op decided on a copy we did not just read might be a stale decision:
                    # confirm it against the store before acknowledging.
                    self._recent.pop(guid, None)
                    current = None
                    continue
                if not result.changed:
                    for reason in result.ignored:
                        log.info("transition ignored", asset_guid=guid, cause=cause, reason=reason)
                    return Applied(False, current, result.ignored)
                update: dict[str, Any] = {
                    "$set": to_bson(result.set_fields),
                    "$inc": {"version": 1},
                }
                if result.history:
                    update["$push"] = {
                        "history": {
                            "$each": [to_bson(h.to_document()) for h in result.history]
                        }
                    }
                written = await self.collection.update_one(
                    {"_id": guid, "version": current.version}, update
                )
                if written.modified_count == 1:
                    new = result.track
                    new.version = current.version + 1
                    new.history = [*current.history, *result.history]
                    for entry in result.history:
                        _report_transition(guid, entry, current, new)
                    self._remember(new)
                    self._notify(new)
                    return Applied(True, new, result.ignored)
                self._recent.pop(guid, None)
                current = None  # someone else wrote first: re-read and re-plan
            raise TransitionConflict(f"asset {guid}: {MAX_CONFLICTS} write conflicts in a row")

    async def add_file(self, guid: str, entry: FileEntry, *, cause: str) -> bool:
        """Append a file (a `$push`, guarded so that a repeated report adds nothing) and mark
        the asset as having a new file. Returns False if the file was already recorded."""
        now = utcnow()
        history = HistoryEntry(
            at=now,
            job=None,
            from_=str(Flag.NO),
            to=str(Flag.YES),
            cause=f"{cause}: file {entry.name}",
            field="has_new_file",
        )
        async with self._one_writer(guid):
            written = await self.collection.update_one(
                {"_id": guid, "file_list.name": {"$ne": entry.name}},
                {
                    "$push": {
                        "file_list": to_bson(entry),
                        "history": to_bson(history.to_document()),
                    },
                    "$set": {"has_new_file": Flag.YES.value},
                    "$inc": {"version": 1, "asset_size": entry.file_size},
                },
            )
            self._recent.pop(guid, None)  # written outside `apply`: the remembered copy is stale
        return written.modified_count == 1

    async def set_fields(
        self, guid: str, fields: Mapping[str, Any], *, cause: str, by: str | None = None,
        reason: str | None = None,
    ) -> Applied:
        """Asset-level flag changes (no job event), guarded and recorded like any transition."""
        return await self.apply(guid, (), cause=cause, asset_fields=fields, by=by, reason=reason)

    async def ready(
        self, job: str, limit: int, *, skip_pipelines: Sequence[str] = (),
        in_flight_only: bool = False,
    ) -> list[Track]:
        """Assets whose job `job` may be claimed now, longest-ready first; not those of
        `skip_pipelines`, and with `in_flight_only` only assets already in flight (an
        operator paused those pipelines, or the daemon drains)."""
        query: dict[str, Any] = {"ready": job}
        if skip_pipelines:
            query["pipeline"] = {"$nin": list(skip_pipelines)}
        if in_flight_only:
            query["queues"] = IN_FLIGHT
        cursor = self.collection.find(query).sort("ready_since", ASCENDING).limit(limit)
        return [Track.model_validate(doc) async for doc in cursor]

    async def ars_queue(self, query: FlagQuery, limit: int) -> list[Track]:
        """Assets `query` matches, parked or not (the caller reads `ars_not_before`). Uses the
        `queues` tags (or, for `has_new_file`, its index)."""
        found: dict[str, Any] = (
            {query.flag: {"$in": [str(v) for v in query.values]}}
            if query.flag == "has_new_file"
            else {"queues": {"$in": [flag_tag(query.flag, v) for v in query.values]}}
        )
        found.update(
            {name: str(values[0]) if len(values) == 1 else {"$in": [str(v) for v in values]}
             for name, values in query.also.items()}
        )  # fmt: skip
        cursor = self.collection.find(found).limit(limit)
        return [Track.model_validate(doc) async for doc in cursor]

    async def open_shares(self) -> list[tuple[float, bool]]:
        """(size in MB, is a derivative) of every asset whose share is open or opening."""
        cursor = self.collection.find(
            {"queues": {"$in": [flag_tag("has_open_share", v) for v in (Flag.YES, Flag.AWAIT)]}},
            {"asset_size": 1, "parent_guid": 1, "file_list.file_size": 1, "file_list.deleted": 1},
        )
        return [
            (files_mb(doc), doc.get("parent_guid") is not None) async for doc in cursor
        ]

    async def count_flag(self, flag: ArsFlag, value: Flag) -> int:
        """How many assets hold `flag` = `value` (a count of a `queues` tag)."""
        return await self.collection.count_documents({"queues": flag_tag(flag, value)})

    async def due_retries(self, now: datetime, limit: int = 500) -> list[Track]:
        cursor = self.collection.find({"retry_due": {"$lte": now}}).limit(limit)
        return [Track.model_validate(doc) async for doc in cursor]

    async def active_on(self, cluster: str) -> list[Track]:
        """Assets with a job starting, queued or running on `cluster`."""
        cursor = self.collection.find({"queues": on_cluster(cluster)})
        return [Track.model_validate(doc) async for doc in cursor]

    async def holding_files(self, limit: int) -> list[Track]:
        """Settled assets (DONE or ERROR) whose files are still on disk: retention's work."""
        cursor = self.collection.find({"queues": HOLDS_FILES}).limit(limit)
        return [Track.model_validate(doc) async for doc in cursor]

    async def awaiting_agent_cleanup(self, cluster: str, limit: int) -> list[Track]:
        """Settled assets whose files on pull cluster `cluster` its agent has yet to remove."""
        cursor = self.collection.find({"queues": agent_cleanup_tag(cluster)},
                                      {"history": 0}).limit(limit)
        return [Track.model_validate(doc) async for doc in cursor]

    async def cleaned_without_agent_cleanup(self, clusters: Sequence[str]
                                            ) -> AsyncIterator[Track]:
        """Assets whose files retention removed, that ran on one of `clusters`, without a
        request to those clusters' agents: a scan, run once per database (see
        `Retention.backfill_agent_cleanup`)."""
        cursor = self.collection.find({
            "temporary_files_local": Flag.NO.value,
            "history.cause": {"$regex": "^retention: files removed"},
            "history.cluster": {"$in": list(clusters)},
            "agent_cleanup": {"$in": [None, []]},
        })  # fmt: skip
        async for doc in cursor:
            yield Track.model_validate(doc)

    async def paused(self) -> list[Track]:
        cursor = self.collection.find({"queues": PAUSED})
        return [Track.model_validate(doc) async for doc in cursor]

    async def next_retry_due(self) -> datetime | None:
        doc = await self.collection.find_one(
            {"retry_due": {"$ne": None}}, {"retry_due": 1}, sort=[("retry_due", ASCENDING)]
        )
        due = doc.get("retry_due") if doc else None
        return due if isinstance(due, datetime) else None

    async def in_flight(self) -> list[Track]:
        cursor = self.collection.find({"queues": IN_FLIGHT})
        return [Track.model_validate(doc) async for doc in cursor]

    async def retag(self) -> int:
        """Re-tag every document whose `queues` tags differ from what this version derives
        (once, when the set of tags grew; the caller records that it was done). Returns how
        many were re-tagged."""
        filled = 0
        async for doc in self.collection.find({}, {"history": 0}):
            track = Track.model_validate(doc)
            tags = derive(track, pipeline=self.pipeline_of(track), now=utcnow())["queues"]
            if doc.get("queues") == tags:
                continue
            written = await self.collection.update_one(
                {"_id": track.id, "version": track.version}, {"$set": {"queues": tags}}
            )
            filled += written.modified_count
        return filled

    async def find(self, guids: Iterable[str]) -> list[Track]:
        cursor = self.collection.find({"_id": {"$in": list(guids)}})
        return [Track.model_validate(doc) async for doc in cursor]

    async def status_counts(self) -> dict[str, Any]:
        """Counts of assets by overall status and of jobs by name and status."""
        assets: dict[str, int] = {}
        async for row in await self.collection.aggregate(
            [{"$group": {"_id": "$jobs_status", "n": {"$sum": 1}}}]
        ):
            assets[str(row["_id"])] = int(row["n"])
        jobs: dict[str, dict[str, int]] = {}
        async for row in await self.collection.aggregate(
            [
                {"$unwind": "$job_list"},
                {
                    "$group": {
                        "_id": {"job": "$job_list.name", "status": "$job_list.status"},
                        "n": {"$sum": 1},
                    }
                },
            ]
        ):
            key = row["_id"]
            jobs.setdefault(str(key["job"]), {})[str(key["status"])] = int(row["n"])
        return {"assets": assets, "jobs": jobs}

    def subscribe(self, callback: Callable[[Track], None]) -> Callable[[], None]:
        """Call `callback` with every document this process writes (a no-op write is not
        one), right after the write; returns the function that ends the subscription. The
        callback runs in the writer's task: it must be quick and must not raise."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def _notify(self, track: Track) -> None:
        for callback in tuple(self._subscribers):
            callback(track)
