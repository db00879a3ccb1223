"""The `control` and `audit` collections: what operators decided, and the record of it.

`control` holds one small document per standing decision: a pause of a pipeline, a cluster or
intake, the drain, a limit changed at run time. The daemon reads them all at start-up (they
survive restarts) and on every housekeeping pass (so a daemon that takes over from another
follows what was decided there). It also holds the schema marker of one-off migrations.

`audit` holds one document per operator action, asset actions included (those are also in
the asset's own history), so that `dasscod audit` lists every action from one index.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection

from dasscod.holds import Hold
from dasscod.model import utcnow

AUDIT_INDEXES = [IndexModel([("at", DESCENDING)], name="at")]

#: The `control` document that records one-off migrations done on this database.
SCHEMA_ID = "schema"


class ControlStore:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection

    async def holds(self) -> list[Hold]:
        cursor = self.collection.find({"kind": {"$exists": True}})
        return [Hold.from_document(doc) async for doc in cursor]

    async def put(self, hold: Hold) -> bool:
        """Record `hold` (replacing an earlier one of the same key); False if an equal hold
        (same value) was already in force, in which case nothing is written."""
        current = await self.collection.find_one({"_id": hold.key})
        if current is not None and current.get("value") == hold.value:
            return False
        await self.collection.replace_one({"_id": hold.key}, hold.to_document(), upsert=True)
        return True

    async def remove(self, kind: str, target: str) -> bool:
        """Lift a hold; False if there was none."""
        removed = await self.collection.delete_one({"_id": f"{kind}:{target}"})
        return removed.deleted_count == 1

    async def schema_version(self, name: str) -> int:
        doc = await self.collection.find_one({"_id": SCHEMA_ID})
        return int((doc or {}).get(name, 0))

    async def set_schema_version(self, name: str, version: int) -> None:
        await self.collection.update_one({"_id": SCHEMA_ID}, {"$set": {name: version}},
                                         upsert=True)


@dataclass(frozen=True)
class AuditRecord:
    """Who did what, when, to what, why, and what came of it."""

    by: str
    action: str
    target: str
    at: datetime
    reason: str | None = None
    outcome: str = ""

    def to_document(self) -> dict[str, Any]:
        return {"by": self.by, "action": self.action, "target": self.target, "at": self.at,
                "reason": self.reason, "outcome": self.outcome}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> AuditRecord:
        return cls(by=str(doc["by"]), action=str(doc["action"]), target=str(doc["target"]),
                   at=doc["at"], reason=doc.get("reason"), outcome=str(doc.get("outcome", "")))


class AuditStore:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection

    async def record(self, by: str, action: str, target: str, *, reason: str | None,
                     outcome: str) -> AuditRecord:
        record = AuditRecord(by=by, action=action, target=target, at=utcnow(), reason=reason,
                             outcome=outcome)
        await self.collection.insert_one(record.to_document())
        return record

    async def latest(self, limit: int, *, by: str | None = None,
                     target: str | None = None) -> list[AuditRecord]:
        """Newest first, along the `at` index."""
        query: dict[str, Any] = {}
        if by:
            query["by"] = by
        if target:
            query["target"] = target
        cursor = self.collection.find(query).sort("at", DESCENDING).limit(limit)
        return [AuditRecord.from_document(doc) async for doc in cursor]
