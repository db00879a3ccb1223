"""The `alerts` collection: the built-in notifier's memory of each condition (whether it is
firing, when a message about it was last sent, what was held back since), so that a restarted
daemon neither repeats a message nor forgets a resolution it owes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from pymongo.asynchronous.collection import AsyncCollection

from dasscod.model import as_utc


class AlertState(BaseModel):
    key: str = Field(alias="_id")
    firing: bool = False
    since: datetime | None = None
    #: When the last message about this condition went out (None: never).
    last_sent: datetime | None = None
    #: The condition's size when the last message was sent (e.g. assets in ERROR).
    sent_count: int = 0
    #: Changes held back since then (it fired again, or grew), for the next digest.
    suppressed: int = 0
    #: Whether this episode's firing was announced (a resolution is owed).
    announced: bool = False
    summary: str = ""

    model_config = {"populate_by_name": True}

    def last_sent_utc(self) -> datetime | None:
        return as_utc(self.last_sent) if self.last_sent else None


class AlertStore:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection

    async def all(self) -> dict[str, AlertState]:
        return {doc["_id"]: AlertState.model_validate(doc)
                async for doc in self.collection.find({})}

    async def put(self, state: AlertState) -> None:
        doc = state.model_dump(by_alias=True)
        await self.collection.replace_one({"_id": state.key}, doc, upsert=True)
