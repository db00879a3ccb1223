"""The leader lease: one document saying which daemon may act on this database, until when.

Two daemons on one database would double every cluster limit and reconcile each other's
submissions, so exactly one acts (the leader) and any other waits (a standby). The document:

    {_id: "leader", holder: "<host>:<pid>:<random>", term: <int>, expires: <UTC time>}

`term` grows by one with every acquisition, so a holder's renewal names the term it holds: a
daemon whose lease was taken over cannot renew it back. Expiry uses the wall clock of the daemon
that writes it (hosts sharing a database must keep their clocks in step, e.g. with NTP); the
holder itself stops acting by its own monotonic clock, earlier (see dasscod.leadership)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

LEASE_ID = "leader"


@dataclass(frozen=True)
class Lease:
    holder: str
    term: int
    expires: datetime


class LeaseStore:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self._c = collection

    async def acquire(self, holder: str, lease_s: float) -> int | None:
        """Take the lease if it is free (never taken, expired, or already ours): the new term,
        or None while another daemon holds it."""
        now = datetime.now(UTC)
        try:
            doc = await self._c.find_one_and_update(
                {"_id": LEASE_ID, "$or": [{"expires": {"$lte": now}}, {"holder": holder}]},
                {"$set": {"holder": holder, "expires": now + timedelta(seconds=lease_s),
                          "acquired": now},
                 "$inc": {"term": 1}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )  # fmt: skip
        except DuplicateKeyError:  # the document exists and someone else holds it
            return None
        return int(doc["term"]) if doc is not None else None

    async def renew(self, holder: str, term: int, lease_s: float) -> bool:
        """Extend our lease; False when it is no longer ours (taken over after expiring)."""
        now = datetime.now(UTC)
        result = await self._c.update_one(
            {"_id": LEASE_ID, "holder": holder, "term": term},
            {"$set": {"expires": now + timedelta(seconds=lease_s)}},
        )
        return result.matched_count == 1

    async def release(self, holder: str, term: int) -> None:
        """Give the lease up at a clean stop, so a standby need not wait for it to expire."""
        await self._c.update_one(
            {"_id": LEASE_ID, "holder": holder, "term": term},
            {"$set": {"expires": datetime.now(UTC)}},
        )

    async def current(self) -> Lease | None:
        doc = await self._c.find_one({"_id": LEASE_ID})
        if doc is None:
            return None
        expires: datetime = doc["expires"]
        return Lease(str(doc["holder"]), int(doc["term"]), expires)
