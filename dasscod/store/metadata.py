"""The `metadata` collection: the asset's metadata as exchanged with ARS.

Every change increments `metadata_version`, so the ARS synchroniser can tell whether the
document changed while a push was in flight (a counter, not a timestamp race).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from dasscod.model import Metadata, utcnow
from dasscod.store.codec import to_bson
from dasscod.store.track import AssetExists

#: Fields a job result may not overwrite: identity and lineage belong to intake.
PROTECTED_FIELDS = frozenset(
    {"_id", "asset_guid", "parent_guid", "pipeline_name", "metadata_version"}
)


class MetadataStore:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection

    async def insert(self, metadata: Metadata) -> None:
        doc = to_bson(metadata.model_dump())
        doc["_id"] = metadata.asset_guid
        doc["metadata_version"] = 1
        try:
            await self.collection.insert_one(doc)
        except DuplicateKeyError as exc:
            raise AssetExists(f"metadata for {metadata.asset_guid} already exists") from exc

    async def get(self, guid: str) -> dict[str, Any] | None:
        return await self.collection.find_one({"_id": guid})

    async def find(self, guids: Iterable[str]) -> list[dict[str, Any]]:
        return [doc async for doc in self.collection.find({"_id": {"$in": list(guids)}})]

    async def merge(self, guid: str, data: Mapping[str, Any], *, updated_by: str) -> bool:
        """`$set` each top-level field of `data`; returns False if the asset has no metadata.

        `tags` is merged tag by tag: a job adds or replaces its own tags (OCR's `ocr`, the
        barcode reader's `device_target`) and keeps everyone else's, such as the
        `metadataTemplate` the digitiser set (the current system's OCR replaced the whole
        object and lost it)."""
        bad = sorted(k for k in data if k in PROTECTED_FIELDS or k.startswith("$") or "." in k)
        tags = data.get("tags") or {}
        if not isinstance(tags, Mapping):
            raise ValueError(f"metadata tags must be an object, not {type(tags).__name__}")
        bad += sorted(f"tags.{k}" for k in tags if not k or k.startswith("$") or "." in k)
        if bad:
            raise ValueError(f"these metadata fields cannot be set by a job: {', '.join(bad)}")
        plain = {k: v for k, v in data.items() if k != "tags"}
        fields = {
            **to_bson(plain),
            **{f"tags.{k}": v for k, v in to_bson(dict(tags)).items()},
            "date_metadata_updated": utcnow(),
            "metadata_updated_by": updated_by,
        }
        result = await self.collection.update_one(
            {"_id": guid}, {"$set": fields, "$inc": {"metadata_version": 1}}
        )
        return result.matched_count == 1

    async def apply_barcode(
        self, guid: str, *, barcodes: list[str], subject: str, multispecimen: bool
    ) -> bool:
        """Barcodes are added as a set, so a repeated callback changes nothing and barcodes
        that MOS linking added from partner assets are kept."""
        result = await self.collection.update_one(
            {"_id": guid},
            {
                "$addToSet": {"barcode": {"$each": barcodes}},
                "$set": {
                    "asset_subject": subject,
                    "multispecimen": multispecimen,
                    "date_metadata_updated": utcnow(),
                },
                "$inc": {"metadata_version": 1},
            },
        )
        return result.matched_count == 1

    async def add_barcodes(self, guid: str, barcodes: list[str]) -> None:
        if barcodes:
            await self.collection.update_one(
                {"_id": guid},
                {
                    "$addToSet": {"barcode": {"$each": barcodes}},
                    "$inc": {"metadata_version": 1},
                },
            )

    async def mark_media_issue(self, guid: str, *, ppi: int | None, note: str | None) -> bool:
        """Derivative creation failed: flag the asset and say what is missing, once per ppi."""
        text = f"No derivative for ppi {ppi}" if ppi is not None else "No derivative"
        if note:
            text += f": {note}"
        result = await self.collection.update_one(
            {"_id": guid},
            {
                "$set": {"status": "ISSUE_WITH_MEDIA", "date_metadata_updated": utcnow()},
                "$addToSet": {"tags.missing_derivative": text},
                "$inc": {"metadata_version": 1},
            },
        )
        return result.matched_count == 1
