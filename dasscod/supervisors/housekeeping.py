"""Housekeeping: retries whose not-before time has come, timed pauses that are over, and the
throttle's resynchronisation with the store.

It sleeps until the earliest due retry (or its interval), so a retry starts on time without
a fast polling loop.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import anyio

from dasscod.coordination import Throttle
from dasscod.log import get_logger
from dasscod.model import Flag, JobStatus, utcnow
from dasscod.pipeline import Event, JobEvent
from dasscod.store import Stores
from dasscod.watchdog import beat

log = get_logger(__name__)


class Housekeeping:
    def __init__(
        self, *, stores: Stores, throttle: Throttle, interval_s: float, stopping: anyio.Event,
        also: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        #: Run on every pass too (the daemon reloads the operators' holds with it).
        self.also = also
        self.stores = stores
        self.throttle = throttle
        self.interval_s = interval_s
        self.stopping = stopping

    async def run(self) -> None:
        while not self.stopping.is_set():
            next_due = await self.run_once()
            delay = self.interval_s
            if next_due is not None:
                delay = min(delay, max(0.05, (next_due - utcnow()).total_seconds()))
            beat(delay)
            with anyio.move_on_after(delay):
                await self.stopping.wait()

    async def run_once(self, now: datetime | None = None) -> datetime | None:
        """Returns when the next retry falls due, if one is scheduled."""
        now = now or utcnow()
        for track in await self.stores.track.due_retries(now):
            events = [
                JobEvent(j.name, Event.RETRY_DUE)
                for j in track.job_list
                if j.status is JobStatus.RETRY and j.not_before is not None and j.not_before <= now
            ]
            if events:
                await self.stores.track.apply(track.id, events, cause="housekeeping", known=track)
        for track in await self.stores.track.paused():
            since = track.available_for_services_timestamp
            wait = track.available_for_services_wait_time
            if since is not None and wait is not None and since + timedelta(seconds=wait) <= now:
                await self.stores.track.set_fields(
                    track.id,
                    {
                        "available_for_services": Flag.YES,
                        "available_for_services_timestamp": None,
                        "available_for_services_wait_time": None,
                    },
                    cause="housekeeping: timed pause over",
                )
        if self.also is not None:
            await self.also()
        queried_at = time.monotonic()
        self.throttle.rebuild(await self.stores.track.in_flight(), queried_at=queried_at)
        return await self.stores.track.next_retry_due()
