"""Collections that ask before every write whether this process may still write.

A daemon paused past its lease (SIGSTOP, a VM freeze, a long GC) wakes with writes already on
their way in its tasks; the check here, made immediately before each write is sent, is what
stops them (dasscod.leadership raises NotLeader from it). Reads are not fenced: a standby
reads to answer operators and health checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.results import (
    BulkWriteResult,
    DeleteResult,
    InsertManyResult,
    InsertOneResult,
    UpdateResult,
)

Document = dict[str, Any]


class NotLeader(Exception):
    """This daemon may not write: it is a standby, or its leader lease ran out."""


class FencedCollection(AsyncCollection[Document]):
    def __init__(self, database: AsyncDatabase[Document], name: str,
                 fence: Callable[[], None]) -> None:
        super().__init__(database, name)
        self._fence = fence

    async def insert_one(self, *args: Any, **kwargs: Any) -> InsertOneResult:
        self._fence()
        return await super().insert_one(*args, **kwargs)

    async def insert_many(self, *args: Any, **kwargs: Any) -> InsertManyResult:
        self._fence()
        return await super().insert_many(*args, **kwargs)

    async def replace_one(self, *args: Any, **kwargs: Any) -> UpdateResult:
        self._fence()
        return await super().replace_one(*args, **kwargs)

    async def update_one(self, *args: Any, **kwargs: Any) -> UpdateResult:
        self._fence()
        return await super().update_one(*args, **kwargs)

    async def update_many(self, *args: Any, **kwargs: Any) -> UpdateResult:
        self._fence()
        return await super().update_many(*args, **kwargs)

    async def delete_one(self, *args: Any, **kwargs: Any) -> DeleteResult:
        self._fence()
        return await super().delete_one(*args, **kwargs)

    async def delete_many(self, *args: Any, **kwargs: Any) -> DeleteResult:
        self._fence()
        return await super().delete_many(*args, **kwargs)

    async def bulk_write(self, *args: Any, **kwargs: Any) -> BulkWriteResult:
        self._fence()
        return await super().bulk_write(*args, **kwargs)

    async def find_one_and_update(self, *args: Any, **kwargs: Any) -> Document | None:
        self._fence()
        return await super().find_one_and_update(*args, **kwargs)

    async def find_one_and_replace(self, *args: Any, **kwargs: Any) -> Document | None:
        self._fence()
        return await super().find_one_and_replace(*args, **kwargs)

    async def find_one_and_delete(self, *args: Any, **kwargs: Any) -> Document | None:
        self._fence()
        return await super().find_one_and_delete(*args, **kwargs)
