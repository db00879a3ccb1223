"""Injectable faults: what a real ARS does on a bad day, on demand.

`Faults` is plain data a test sets (directly, or through `POST /_admin/faults`); `FaultMiddleware`
applies it to every request except the admin API, before routing, so the token endpoint, the
asset service and the file proxy all suffer alike. Counted faults (`fail_next`, `drop_next`,
`lose_next`, `throttle_next`, `slow_next`) make retry tests exact; rates make soak tests realistic.
A dropped connection is real: response headers promise a body that never comes and uvicorn
closes the socket, so the client sees a protocol error, as after a reset proxy.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

ADMIN_PREFIX = "/_admin"


@dataclass
class Faults:
    #: Added to every request (seconds). A request that reaches ARS is carried out at once and
    #: its answer is late, as with a slow server: a client that gives up meanwhile leaves the
    #: work done behind it.
    latency_s: float = 0.0
    #: The next N requests' answers are `slow_s` late (to trip client timeouts).
    slow_next: int = 0
    slow_s: float = 1.0
    #: Fraction of requests answered with `error_status`.
    error_rate: float = 0.0
    #: The next N requests are answered with `error_status`.
    fail_next: int = 0
    error_status: int = 503
    #: Fraction of requests whose connection is dropped mid-response.
    drop_rate: float = 0.0
    drop_next: int = 0
    #: Fraction of requests ARS carries out but whose answer is lost (the connection drops
    #: after the work is done): what makes a retried call meet its own first attempt.
    lose_rate: float = 0.0
    lose_next: int = 0
    #: The next N requests get 429 with this Retry-After (seconds; None: no header).
    throttle_next: int = 0
    retry_after_s: float | None = 1.0
    #: Everything answers 503 until this monotonic time (see `down_for`).
    down_until: float = 0.0
    seed: int | None = None
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def down_for(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds

    def reseed(self) -> None:
        self._rng = random.Random(self.seed)

    def update(self, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            if name.startswith("_") or not hasattr(self, name):
                raise ValueError(f"unknown fault {name!r}")
            if name == "down_for":
                self.down_for(float(value))
            else:
                setattr(self, name, value)
        self.reseed()

    def _take(self, counter: str) -> bool:
        n: int = getattr(self, counter)
        if n > 0:
            setattr(self, counter, n - 1)
            return True
        return False

    def decide(self) -> tuple[float, str | None]:
        """(delay, outcome) for one request; outcome is None, "drop", "lose", "throttle" or
        "error"."""
        delay = self.latency_s + (self.slow_s if self._take("slow_next") else 0.0)
        if time.monotonic() < self.down_until:
            return delay, "error"
        if self._take("drop_next") or (self.drop_rate and self._rng.random() < self.drop_rate):
            return delay, "drop"
        if self._take("lose_next") or (self.lose_rate and self._rng.random() < self.lose_rate):
            return delay, "lose"
        if self._take("throttle_next"):
            return delay, "throttle"
        if self._take("fail_next") or (self.error_rate and self._rng.random() < self.error_rate):
            return delay, "error"
        return delay, None


@dataclass
class RequestRecord:
    method: str
    path: str
    outcome: str  # "ok" (passed to the app), "drop", "lose" (passed, answer lost), ...


class FaultMiddleware:
    def __init__(self, app: ASGIApp, faults: Faults, log: list[RequestRecord]) -> None:
        self.app = app
        self.faults = faults
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        delay, outcome = self.faults.decide()
        self.log.append(RequestRecord(scope["method"], scope["path"], outcome or "ok"))
        if outcome is None:

            async def late(message: Any) -> None:
                if message["type"] == "http.response.start" and delay:
                    await asyncio.sleep(delay)
                await send(message)

            await self.app(scope, receive, late)
            return
        if outcome == "lose":

            async def swallow(message: Any) -> None:
                """ARS has done the work; its answer never reaches the client."""

            await self.app(scope, receive, swallow)
        if delay:
            await asyncio.sleep(delay)
        if outcome in ("drop", "lose"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-length", b"1000"),
                        (b"content-type", b"application/json"),
                    ],
                }
            )
            # Return without the promised body: the server closes the connection.
        elif outcome == "throttle":
            headers = [(b"content-type", b"application/json")]
            if self.faults.retry_after_s is not None:
                headers.append((b"retry-after", str(self.faults.retry_after_s).encode()))
            await _respond(
                send,
                429,
                headers,
                {"errorCode": "TOO_MANY_REQUESTS", "errorMessage": "Too many requests"},
            )
        else:
            status = self.faults.error_status
            await _respond(
                send,
                status,
                [(b"content-type", b"application/json")],
                {
                    "type": "Error",
                    "protocolVersion": "1.0",
                    "errorCode": "UPSTREAM_ERROR",
                    "errorMessage": f"injected fault (HTTP {status})",
                },
            )


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: Any) -> None:
    payload = json.dumps(body).encode()
    headers = [*headers, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
