"""The `mos` collection: multi-object specimens linked through a disposable label id.

Labels are unique only within one batch (workstation and capture date), so the group key is
`batch_list_name + "_" + disposable_id`. Every step is an idempotent `$addToSet` or an upsert,
so a repeated or concurrent barcode callback converges on the same links.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection

from dasscod.store.metadata import MetadataStore

MOS_INDEXES = [IndexModel([("unique_label_id", ASCENDING)], name="unique_label_id")]


@dataclass(frozen=True)
class MosMember:
    guid: str
    label: bool
    disposable_id: str
    batch_list_name: str
    institution: str
    collection: str
    barcodes: list[str]

    @property
    def unique_label_id(self) -> str:
        return f"{self.batch_list_name}_{self.disposable_id}"

    @property
    def spid(self) -> str:
        if not self.barcodes:
            return "NOT_AVAILABLE"
        return f"{self.institution}_{self.collection}_{self.barcodes[0]}"


class MosStore:
    def __init__(self, collection: AsyncCollection[dict[str, Any]], metadata: MetadataStore):
        self.collection = collection
        self.metadata = metadata

    async def get(self, guid: str) -> dict[str, Any] | None:
        return await self.collection.find_one({"_id": guid})

    async def link(self, member: MosMember) -> list[str]:
        """Record `member` and connect it with every asset of its group, both ways.

        Returns the guids whose metadata changed (they need an ARS metadata update).
        """
        # Insert first, then look for partners: of two members arriving at once, the later
        # one's query is guaranteed to see the earlier one's document.
        await self.collection.update_one(
            {"_id": member.guid},
            {
                "$setOnInsert": {
                    "label": member.label,
                    "disposable_id": member.disposable_id,
                    "unique_label_id": member.unique_label_id,
                    "spid": member.spid,
                    "barcodes": member.barcodes,
                    "label_connections": [],
                }
            },
            upsert=True,
        )
        partners = [
            doc
            async for doc in self.collection.find(
                {"unique_label_id": member.unique_label_id, "_id": {"$ne": member.guid}}
            )
        ]
        if not partners:
            return []
        partner_ids = [str(p["_id"]) for p in partners]
        await self.collection.update_one(
            {"_id": member.guid}, {"$addToSet": {"label_connections": {"$each": partner_ids}}}
        )
        await self.collection.update_many(
            {"_id": {"$in": partner_ids}}, {"$addToSet": {"label_connections": member.guid}}
        )
        # A label collects every barcode its specimens were read with (all of an MSO's, not
        # only the first) and each specimen gets the label's. Only the barcodes each asset was
        # read with (`barcodes` in its MOS document) travel, so links never snowball.
        touched: set[str] = set()
        for partner in partners:
            if bool(partner.get("label")) == member.label:
                continue  # two specimens (or two labels) are connected, nothing to copy
            pid = str(partner["_id"])
            partner_codes = [str(c) for c in partner.get("barcodes") or []]
            if member.barcodes:
                await self.metadata.add_barcodes(pid, member.barcodes)
                touched.add(pid)
            if partner_codes:
                await self.metadata.add_barcodes(member.guid, partner_codes)
                touched.add(member.guid)
        return sorted(touched)
