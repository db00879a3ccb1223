"""The operators' reads of `track`: filtered, paged listings and the assets in error.

Every query is driven by the `queues` tags (`status:`, `at:`, `on:`, `paused`, `ars_error`;
see `dasscod.queues`), so none scans the collection; the pipeline and age filters narrow what
the tags found. Listings are newest first and paged by a cursor (the last row's creation time
and guid), which stays correct while assets are added.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

from pymongo import DESCENDING
from pymongo.asynchronous.collection import AsyncCollection

from dasscod.model import Flag, JobStatus, Track
from dasscod.queues import (
    ARS_ERROR,
    PAUSED,
    ArsFlag,
    agent_cleanup_tag,
    at_job,
    on_cluster,
    status_tag,
)

ARS_FLAG_NAMES: tuple[ArsFlag, ...] = get_args(ArsFlag)
#: Listing rows leave out what only `show` needs.
LISTING_PROJECTION = {"history": 0, "file_list": 0}


class BadCursor(ValueError):
    pass


@dataclass(frozen=True)
class AssetFilter:
    statuses: Sequence[str] = ()
    job: str | None = None
    pipeline: str | None = None
    cluster: str | None = None
    paused: bool = False
    #: Only assets with an ARS flag in ERROR (the ARS sync gave them up).
    ars_error: bool = False
    created_before: datetime | None = None
    created_after: datetime | None = None


def encode_cursor(track: Track) -> str:
    raw = f"{track.created_timestamp.isoformat()}|{track.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        when, guid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(when), guid
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadCursor(f"not a cursor this daemon gave out: {cursor!r}") from exc


class TrackQueries:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection

    async def listing(
        self, where: AssetFilter, *, limit: int, after: str | None = None
    ) -> tuple[list[Track], str | None]:
        """One page of assets, newest first, and the cursor of the next page (None: last)."""
        statuses = list(where.statuses) or [str(s) for s in JobStatus]
        tags = [t for t in (
            at_job(where.job) if where.job else None,
            on_cluster(where.cluster) if where.cluster else None,
            PAUSED if where.paused else None,
            ARS_ERROR if where.ars_error else None,
        ) if t]  # fmt: skip
        clauses: list[dict[str, Any]] = [{"queues": {"$in": [status_tag(s) for s in statuses]}}]
        clauses += [{"queues": tag} for tag in tags]
        if where.ars_error:
            # Among the assets ARS refused (the tag), those the sync gave up: a refusal the
            # sync still retries (an ERDA sync failed once) sets `ars_error` too.
            clauses.append({"$or": [{flag: Flag.ERROR.value} for flag in ARS_FLAG_NAMES]})
        if where.pipeline:
            clauses.append({"pipeline": where.pipeline})
        if where.created_before:
            clauses.append({"created_timestamp": {"$lt": where.created_before}})
        if where.created_after:
            clauses.append({"created_timestamp": {"$gte": where.created_after}})
        if after:
            when, guid = decode_cursor(after)
            clauses.append({"$or": [{"created_timestamp": {"$lt": when}},
                                    {"created_timestamp": when, "_id": {"$lt": guid}}]})
        cursor = (
            self.collection.find({"$and": clauses}, LISTING_PROJECTION)
            .sort([("created_timestamp", DESCENDING), ("_id", DESCENDING)])
            .limit(limit + 1)
        )
        rows = [Track.model_validate(doc) async for doc in cursor]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (encode_cursor(rows[-1]) if more and rows else None)

    async def in_error(self, limit: int) -> list[Track]:
        """Assets in ERROR, or whose last ARS call was refused."""
        cursor = self.collection.find(
            {"queues": {"$in": [status_tag(JobStatus.ERROR), ARS_ERROR]}}, LISTING_PROJECTION
        ).limit(limit)
        return [Track.model_validate(doc) async for doc in cursor]

    async def count_agent_cleanup(self, cluster: str) -> int:
        """Settled assets whose files on pull cluster `cluster` its agent has yet to remove."""
        return await self.collection.count_documents({"queues": agent_cleanup_tag(cluster)})

    async def count_on(self, cluster: str) -> int:
        """Assets with a job starting, queued or running on `cluster`, by the store."""
        return await self.collection.count_documents({"queues": on_cluster(cluster)})
