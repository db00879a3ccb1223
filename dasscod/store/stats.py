"""The store's counts behind the metrics' gauges (`dasscod.metrics.Snapshot`).

Each query is driven by the `queues` tags (see `dasscod.queues`), so none scans the
collection: the unfinished assets (few) are read with a projection and counted here; the
finished ones are counted per pipeline from their `status:` tag; each ARS step's backlog is
one indexed count. The daemon runs this in the background, never on a scrape.
"""

from __future__ import annotations

import time
from typing import Any

import pymongo
from pymongo.asynchronous.collection import AsyncCollection

from dasscod.metrics import Snapshot
from dasscod.model import JobStatus, as_utc
from dasscod.queues import TAGGED_FLAGS, status_tag

#: Overall statuses of an asset whose pipeline has not finished (ERROR waits for an operator).
UNFINISHED = (JobStatus.WAITING, JobStatus.RUNNING, JobStatus.RETRY, JobStatus.PAUSED,
              JobStatus.ERROR)
#: Of those, the ones the daemon itself still has to move on.
MOVING = (JobStatus.WAITING, JobStatus.RUNNING, JobStatus.RETRY)
FINISHED = (JobStatus.DONE, JobStatus.CANCELLED)
#: The finished counts read every document that ever finished: give them time.
FINISHED_TIMEOUT_S = 600.0

_PROJECTION = {
    "_id": 0, "pipeline": 1, "jobs_status": 1, "created_timestamp": 1,
    "job_list.name": 1, "job_list.status": 1, "job_list.cluster": 1,
}


async def take_snapshot(
    collection: AsyncCollection[dict[str, Any]],
    previous: Snapshot | None = None,
    *,
    finished_every_s: float = 300.0,
    ars: bool = True,
) -> Snapshot:
    """The store's counts. Finished assets only grow and nobody alerts on them, so their
    counts are carried over from `previous` and read again every `finished_every_s`.
    Without ARS (`ars=False`) every asset keeps its `is_in_ars=NO` tag, so the backlog counts
    would read the whole collection for numbers nobody works off: they are left out."""
    started = time.monotonic()
    assets: dict[tuple[str, str], int] = {}
    jobs: dict[tuple[str, str, str, str], int] = {}
    oldest: float | None = None
    cursor = collection.find(
        {"queues": {"$in": [status_tag(s) for s in UNFINISHED]}}, _PROJECTION
    )
    async for doc in cursor:
        pipeline, status = str(doc.get("pipeline", "")), str(doc.get("jobs_status", ""))
        assets[pipeline, status] = assets.get((pipeline, status), 0) + 1
        for job in doc.get("job_list", []):
            key = (pipeline, str(job.get("name")), str(job.get("status")),
                   str(job.get("cluster") or ""))
            jobs[key] = jobs.get(key, 0) + 1
        created = doc.get("created_timestamp")
        if status in MOVING and created is not None:
            stamp = as_utc(created).timestamp()
            oldest = stamp if oldest is None else min(oldest, stamp)
    finished = dict(previous.finished) if previous is not None else {}
    finished_at = previous.finished_at if previous is not None else 0.0
    if previous is None or time.time() - finished_at >= finished_every_s:
        finished = await _finished_counts(collection)
        finished_at = time.time()
    assets.update(finished)
    backlog: dict[str, int] = {}
    for flag, values in TAGGED_FLAGS.items() if ars else ():
        for value in sorted(values):
            backlog[f"{flag}={value}"] = await collection.count_documents(
                {"queues": f"{flag}={value}"}
            )
    return Snapshot(assets=assets, jobs=jobs, ars_backlog=backlog, oldest_unfinished=oldest,
                    finished=finished, finished_at=finished_at,
                    taken_at=time.time(), took_s=time.monotonic() - started)


async def _finished_counts(
    collection: AsyncCollection[dict[str, Any]],
) -> dict[tuple[str, str], int]:
    """Finished assets by pipeline: every document that ever finished, so this is the one
    heavy read; it runs every `finished_every_s`, with a time limit of its own."""
    counts: dict[tuple[str, str], int] = {}
    with pymongo.timeout(FINISHED_TIMEOUT_S):
        for status in FINISHED:
            async for row in await collection.aggregate([
                {"$match": {"queues": status_tag(status)}},
                {"$group": {"_id": "$pipeline", "n": {"$sum": 1}}},
            ]):
                counts[str(row["_id"]), str(status)] = int(row["n"])
    return counts
