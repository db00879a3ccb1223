"""The only code that speaks MongoDB. One AsyncMongoClient, shared by every supervisor."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import pymongo
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.monitoring import CommandListener

from dasscod.log import get_logger
from dasscod.pipeline import Pipeline, RetryPolicy
from dasscod.store.alerts import AlertStore
from dasscod.store.control import AUDIT_INDEXES, AuditStore, ControlStore
from dasscod.store.errors import describe, is_fatal
from dasscod.store.fence import FencedCollection
from dasscod.store.lease import LeaseStore
from dasscod.store.metadata import MetadataStore
from dasscod.store.mos import MOS_INDEXES, MosMember, MosStore
from dasscod.store.track import (
    TRACK_INDEXES,
    Applied,
    AssetExists,
    AssetNotFound,
    TrackStore,
    TransitionConflict,
)
from dasscod.store.track_queries import TrackQueries

if TYPE_CHECKING:
    from dasscod.settings import MongoSettings


class DaemonOptions(TypedDict, total=False):
    """What the daemon's stores add to a plain connection (see `Stores.connect`)."""

    policy: RetryPolicy
    listeners: list[CommandListener] | None
    fence: Callable[[], None] | None

log = get_logger(__name__)

#: The generation of the `queues` tags: raised when this version derives tags that documents
#: written by an earlier one lack (2: the operators' `status:`, `at:` and `ars_error` tags).
QUEUE_TAGS_VERSION = 2

__all__ = [
    "Applied",
    "AssetExists",
    "AssetNotFound",
    "AuditStore",
    "ControlStore",
    "MetadataStore",
    "MosMember",
    "MosStore",
    "Ping",
    "Stores",
    "TrackStore",
    "TransitionConflict",
]


@dataclass(frozen=True)
class Ping:
    """The answer to a ping: true when MongoDB answered."""

    error: str | None = None
    #: Authentication or configuration: retrying cannot help.
    fatal: bool = False

    def __bool__(self) -> bool:
        return self.error is None


class Stores:
    """The three collections behind one client."""

    def __init__(
        self,
        client: AsyncMongoClient[dict[str, Any]],
        database: str,
        pipelines: Mapping[str, Pipeline],
        *,
        policy: RetryPolicy = RetryPolicy(),
        fence: Callable[[], None] | None = None,
        ping_timeout_s: float = 10.0,
    ) -> None:
        """`fence`, when given, is called before every write and raises when this process
        may not write (the daemon's leader lease); the lease's own collection is not fenced."""
        self.client = client
        self.db = client[database]
        self.ping_timeout_s = ping_timeout_s

        def collection(name: str) -> AsyncCollection[dict[str, Any]]:
            return FencedCollection(self.db, name, fence) if fence else self.db[name]

        self.track = TrackStore(collection("track"), pipelines, policy=policy)
        self.metadata = MetadataStore(collection("metadata"))
        self.mos = MosStore(collection("mos"), self.metadata)
        self.track_queries = TrackQueries(collection("track"))
        self.control = ControlStore(collection("control"))
        self.audit = AuditStore(collection("audit"))
        self.lease = LeaseStore(self.db["lease"])
        self.alerts = AlertStore(collection("alerts"))

    @classmethod
    def connect(
        cls,
        uri: str,
        database: str,
        pipelines: Mapping[str, Pipeline],
        *,
        timeout_s: float = 10.0,
        operation_timeout_s: float | None = None,
        policy: RetryPolicy = RetryPolicy(),
        listeners: list[CommandListener] | None = None,
        fence: Callable[[], None] | None = None,
    ) -> Stores:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri,
            tz_aware=True,
            serverSelectionTimeoutMS=int(timeout_s * 1000),
            connectTimeoutMS=int(timeout_s * 1000),
            # Every operation, retries included, ends by then: a hung server cannot hang a
            # supervisor (an outage then reads as a timeout, handled like any other).
            timeoutMS=int((operation_timeout_s or 3 * timeout_s) * 1000),
            event_listeners=listeners or [],
            appname="dasscod",
        )
        return cls(client, database, pipelines, policy=policy, fence=fence,
                   ping_timeout_s=timeout_s)

    @classmethod
    def from_settings(
        cls, mongo: MongoSettings, pipelines: Mapping[str, Pipeline],
        **daemon: Unpack[DaemonOptions],
    ) -> Stores:
        """`connect` where the `[mongo]` settings say; `daemon` holds what only the daemon
        adds (retry policy, command listeners, the leader fence)."""
        return cls.connect(mongo.uri.get_secret_value(), mongo.database, pipelines,
                           timeout_s=mongo.timeout_s,
                           operation_timeout_s=mongo.operation_timeout_s, **daemon)

    async def ensure_indexes(self) -> None:
        """Idempotent: creating an index that exists with the same spec is a no-op."""
        await self.db["track"].create_indexes(TRACK_INDEXES)
        await self.db["mos"].create_indexes(MOS_INDEXES)
        await self.db["audit"].create_indexes(AUDIT_INDEXES)
        if await self.control.schema_version("queue_tags") < QUEUE_TAGS_VERSION:
            # Once per database: documents of an earlier version get the tags added since.
            filled = await self.track.retag()
            await self.control.set_schema_version("queue_tags", QUEUE_TAGS_VERSION)
            log.info("track documents given the new queue tags", documents=filled)

    async def ping(self) -> Ping:
        """Whether MongoDB answers, and if not, why (the server's message, and whether
        waiting can help)."""
        try:
            # A ping answers "is it there now": the server-selection bound, not timeoutMS
            # (which would otherwise take precedence and wait a whole operation's time).
            with pymongo.timeout(self.ping_timeout_s):
                await self.client.admin.command("ping")
        except Exception as exc:
            return Ping(error=describe(exc), fatal=is_fatal(exc))
        return Ping()

    async def close(self) -> None:
        await self.client.close()
