"""The listener served for real (uvicorn with the daemon's listener configuration) on a free
port, for tests that need sockets: limits, TLS, timeouts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import uvicorn

from dasscod.listener.serve import listener_config
from dasscod.settings import ListenerSettings


class _Server(uvicorn.Server):
    """Signals belong to pytest here, as they belong to the daemon in production."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def serving(app: Any, **listener: Any) -> AsyncIterator[int]:
    """Serve `app` until the block ends; yields the port. Use it inside the test itself: a
    task group cannot span a fixture's setup and teardown."""
    settings = ListenerSettings(host="127.0.0.1", port=0, **listener)
    server = _Server(listener_config(app, settings, graceful_s=1))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 -- uvicorn has no "bound" event
                await anyio.sleep(0.01)
        port: int = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield port
        finally:
            server.should_exit = True
