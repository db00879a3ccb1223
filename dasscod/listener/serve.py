"""How the listener is served: uvicorn with bounded connections and timeouts, optionally TLS.

uvicorn closes a keep-alive connection that stays idle after a response, but not one that
connects and never sends a request, nor one that sends its headers a byte at a time, and
it does not bound how many connections it holds, how large a request's head is (httptools
sets no limit: one connection could send gigabytes of headers) or how many pipelined requests
a connection queues. `GuardedHttp` adds those: at most `max_connections` at once (when full,
a new connection closes the one that has waited longest for a request, else the one whose
answer has been blocked longest; a newcomer is closed only when every connection is busy
with a request); every request's headers complete within
`header_timeout_s` of the connection, or of the previous response; a request line of at most
`MAX_URL_BYTES` (else 414), at most `MAX_HEADERS` header lines of `MAX_HEAD_BYTES` in all,
trailers included (else 431); at most `MAX_PIPELINED` requests waiting behind the one being
answered (a client that sends more is cut off: no HTTP client in use pipelines at all); an
answer that cannot be written for `send_timeout_s` (the client stopped reading) drops the
connection.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from dasscod import metrics
from dasscod.listener.pace import BodyPace
from dasscod.settings import ListenerSettings


class ListenerConfig(uvicorn.Config):
    def __init__(self, app: Any, *, max_connections: int, header_timeout_s: float,
                 send_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, http=GuardedHttp, **kwargs)
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.send_timeout_s = send_timeout_s
        #: Connections waiting for a request's headers, the longest waiting first.
        self.awaiting: dict[GuardedHttp, None] = {}
        #: Connections whose answer is blocked (the client is not reading), longest first.
        self.stalled: dict[GuardedHttp, None] = {}
        #: Connections closed to make room, until their transport reports them gone.
        self.evicted: set[GuardedHttp] = set()
        self._watching = False

    def watch_sending(self, loop: asyncio.AbstractEventLoop,
                      connections: set[GuardedHttp]) -> None:
        """Look at every connection's unsent answer a few times per `send_timeout_s` while
        there are connections: one timer for all of them."""
        if self._watching:
            return
        self._watching = True
        period = min(1.0, self.send_timeout_s / 4)

        def sweep() -> None:
            now = loop.time()
            for connection in list(connections):
                connection.check_sending(now)
            if connections:
                loop.call_later(period, sweep)
            else:
                self._watching = False

        loop.call_later(period, sweep)


KIB = 1024
#: The request line's target (path and query). A job's longest is a file's path, < 1 KiB.
MAX_URL_BYTES = 8 * KIB
#: Header (and trailer) lines of one request, and their names and values in all. A job
#: token is about 400 bytes.
MAX_HEADERS = 100
MAX_HEAD_BYTES = 64 * KIB
MAX_PIPELINED = 16


class HeadRefused(Exception):
    """Raised in a parser callback: httptools stops parsing and the request is refused."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class GuardedHttp(HttpToolsProtocol):
    _header_timer: asyncio.TimerHandle | None = None
    #: The unsent answer's size and since when it has not changed (None: nothing unsent).
    _unsent: tuple[int, float] | None = None
    _head_lines = 0
    _head_bytes = 0
    #: Bytes received since the parser last made progress (a request began, its headers
    #: completed, body bytes came): httptools gathers a header or trailer value whole before
    #: it hands it over, so an endless one is only seen here.
    _unparsed = 0
    _refused: HeadRefused | None = None

    @property
    def limits(self) -> ListenerConfig:
        config = self.config
        assert isinstance(config, ListenerConfig)
        return config

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.limits
        if len(self.connections) - len(limits.evicted) > limits.max_connections:
            # Full: make room by closing the connection that has waited longest for a
            # request (idle, or sending its headers slowly), else the one whose answer has
            # been blocked longest (its client does not read): clients that never ask, or
            # never read, cannot keep the ones that do out. When every connection is busy
            # with a request, the newcomer is closed instead.
            oldest = next(iter(limits.awaiting), None) or next(iter(limits.stalled), self)
            oldest.evict()
            metrics.LISTENER_CUT_OFF.labels(reason="full" if oldest is self else "evicted").inc()
            if oldest is self:
                return
        limits.watch_sending(self.loop, self.connections)  # type: ignore[arg-type]
        self._await_headers()

    def evict(self) -> None:
        self._cancel_header_timer()
        self.limits.stalled.pop(self, None)
        self.limits.evicted.add(self)
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # close would first write out what this client never takes
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._unparsed += len(data)
        super().data_received(data)
        if self._unparsed > MAX_URL_BYTES + MAX_HEAD_BYTES and not self.transport.is_closing():
            self._stop(HeadRefused(431, f"more than {MAX_HEAD_BYTES} bytes of headers"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_lines = self._head_bytes = self._unparsed = 0

    def on_body(self, body: bytes) -> None:
        self._unparsed = 0
        super().on_body(body)

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > MAX_URL_BYTES:
            self._refuse(414, f"request target longer than {MAX_URL_BYTES} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Also called for a chunked body's trailers, after the headers: counted with them.
        self._head_lines += 1
        self._head_bytes += len(name) + len(value)
        if self._head_lines > MAX_HEADERS or self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(431, f"more than {MAX_HEADERS} header lines or {MAX_HEAD_BYTES} "
                         "bytes of headers")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._unparsed = 0
        if len(self.pipeline) >= MAX_PIPELINED:
            self._refuse(429, f"more than {MAX_PIPELINED} pipelined requests waiting")
        super().on_headers_complete()

    def _refuse(self, status: int, detail: str) -> None:
        self._refused = HeadRefused(status, detail)
        raise self._refused

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request httptools could not parse; ours when a limit above
        stopped the parser."""
        refused, self._refused = self._refused, None
        if refused is None:
            super().send_400_response(msg)
        else:
            self._stop(refused)

    def _stop(self, refused: HeadRefused) -> None:
        """Answer the refusal if it is about the head of the next request, else (trailers,
        a pipeline) cut the connection: a second answer would garble the first."""
        metrics.LISTENER_CUT_OFF.labels(
            reason="pipelined" if refused.status == 429 else "head_too_large").inc()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        elif self._header_timer is not None:
            body = json.dumps({"detail": refused.detail}).encode()
            self.transport.write(b"".join([
                STATUS_LINE[refused.status], b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n", body]))
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request on this connection, unless a pipelined one was already started.
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._await_headers()

    def pause_writing(self) -> None:
        """The transport's buffer is full: the client is not reading as fast as we answer."""
        super().pause_writing()
        self.limits.stalled.setdefault(self, None)

    def resume_writing(self) -> None:
        self.limits.stalled.pop(self, None)
        super().resume_writing()

    def check_sending(self, now: float) -> None:
        """uvicorn waits for a client to take its answer without limit, and a closed
        connection stays open until its answer is written out: an answer that has not
        moved for `send_timeout_s` (the client stopped reading) drops the connection."""
        size = self.transport.get_write_buffer_size()
        if not size:
            self._unsent = None
        elif self._unsent is None or self._unsent[0] != size:
            self._unsent = (size, now)
        elif now - self._unsent[1] >= self.limits.send_timeout_s:
            self._unsent = None
            self.limits.stalled.pop(self, None)
            metrics.LISTENER_CUT_OFF.labels(reason="not_reading").inc()
            self.transport.abort()  # close would wait to write out what it never takes

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self.limits.stalled.pop(self, None)
        self.limits.evicted.discard(self)
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._cancel_header_timer()
        config = self.config
        assert isinstance(config, ListenerConfig)
        self._header_timer = self.loop.call_later(config.header_timeout_s, self._too_slow)
        config.awaiting[self] = None

    def _too_slow(self) -> None:
        self._header_timer = None
        self.limits.awaiting.pop(self, None)
        if not self.transport.is_closing():
            metrics.LISTENER_CUT_OFF.labels(reason="header_timeout").inc()
            self.transport.close()

    def _cancel_header_timer(self) -> None:
        self.limits.awaiting.pop(self, None)
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
        send_timeout_s=settings.send_timeout_s,
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
