"""`/readyz` asks MongoDB whether it answers; anyone on the cluster network may call it.

So a flood of /readyz must not become a flood of pings (nor, with MongoDB down, a pile of
requests each waiting out its own server selection): one ping at a time, and its answer is
reused for `fresh_s`. A load balancer polling every few seconds sees no difference.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from dasscod.store import Ping


class SharedPing:
    def __init__(self, ping: Callable[[], Awaitable[Ping]], *, fresh_s: float = 1.0) -> None:
        self._ping = ping
        self._fresh_s = fresh_s
        self._lock = anyio.Lock()
        self._last: Ping | None = None
        self._at = 0.0

    async def __call__(self) -> Ping:
        async with self._lock:  # the callers that queue here get the answer just fetched
            if self._last is None or anyio.current_time() - self._at >= self._fresh_s:
                self._last = await self._ping()
                self._at = anyio.current_time()
            return self._last
