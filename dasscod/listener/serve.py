"""How the listener is served: uvicorn with bounded connections and timeouts, optionally TLS.

uvicorn closes a keep-alive connection that stays idle after a response, but not one that
connects and never sends a request, nor one that sends its headers a byte at a time, and
it does not bound how many connections it holds. `GuardedHttp` adds those three: at most
`max_connections` at once (one more is closed at once), and every request's headers must be
complete within `header_timeout_s` of the connection, or of the previous response.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from dasscod.listener.pace import BodyPace
from dasscod.settings import ListenerSettings


class ListenerConfig(uvicorn.Config):
    def __init__(self, app: Any, *, max_connections: int, header_timeout_s: float,
                 **kwargs: Any) -> None:
        super().__init__(app, http=GuardedHttp, **kwargs)
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s


class GuardedHttp(HttpToolsProtocol):
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        config = self.config
        assert isinstance(config, ListenerConfig)
        if len(self.connections) > config.max_connections:
            transport.close()
            return
        self._await_headers()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_headers()  # the next request on this connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._cancel_header_timer()
        config = self.config
        assert isinstance(config, ListenerConfig)
        self._header_timer = self.loop.call_later(config.header_timeout_s, self._too_slow)

    def _too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None


def listener_config(app: Any, settings: ListenerSettings, *, graceful_s: int) -> ListenerConfig:
    tls: dict[str, Any] = {}
    if settings.tls_certfile is not None:
        tls = {"ssl_certfile": str(settings.tls_certfile),
               "ssl_keyfile": str(settings.tls_keyfile) if settings.tls_keyfile else None}
    return ListenerConfig(
        # Outermost: a trickled body is cut off whichever route reads it.
        BodyPace(app, timeout_s=settings.body_timeout_s, min_rate=settings.body_min_rate),
        max_connections=settings.max_connections,
        header_timeout_s=settings.header_timeout_s,
        host=settings.host,
        port=settings.port,
        lifespan="off",
        log_config=None,
        access_log=False,
        # Jobs call us directly; per-request header work buys nothing on the hot path.
        proxy_headers=False,
        server_header=False,
        date_header=False,
        timeout_keep_alive=int(settings.idle_timeout_s),
        timeout_graceful_shutdown=graceful_s,
        **tls,
    )
