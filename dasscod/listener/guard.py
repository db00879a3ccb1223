"""Authentication on the headers and a size cap on every body, before any body is read.

FastAPI reads and parses a request's body before it runs the route's dependencies, so an
authentication dependency alone lets anyone make the daemon read (and spool to disk) a body
of any size. This ASGI middleware runs first: it finds the request's gate by method and path,
answers 401/403 from the `Authorization` header alone, answers 413 at once when the declared
`Content-Length` is over the gate's cap, and counts what a streamed (chunked) body delivers,
stopping it with 413 at the cap. Nothing past the cap is read: the server closes a connection
whose body was not read to the end. The routes still check the credential fully (which asset,
which job); the gate only keeps unauthenticated and oversized bodies out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: What a gate answers for a credential: None to let the request in, or (status, detail).
Refusal = tuple[int, str] | None
#: A gate's check: the bearer token and the path's named parts (a pull cluster's name).
Check = Callable[[str | None, Mapping[str, str]], Refusal]

KB = 1024
#: A request whose route takes no body, or a small JSON one.
DEFAULT_MAX_BYTES = 64 * KB


@dataclass(frozen=True)
class Gate:
    """Requests whose method is in `methods` (empty: any) and whose path matches `path`;
    the pattern's named groups are handed to the check."""

    path: re.Pattern[str]
    methods: frozenset[str]
    #: None: no credential at the gate (health, the OpenAPI document).
    check: Check | None
    max_bytes: int = DEFAULT_MAX_BYTES
    #: At most this many of its requests at once (None: no limit); one more gets 503 with
    #: Retry-After before its body is read. Bounds what large uploads can hold together.
    at_once: int | None = None

    def match(self, method: str, path: str) -> Mapping[str, str] | None:
        """The path's named parts if the request goes through this gate, else None."""
        if self.methods and method not in self.methods:
            return None
        found = self.path.fullmatch(path)
        return found.groupdict() if found is not None else None


def gate(pattern: str, check: Check | None, max_bytes: int = DEFAULT_MAX_BYTES,
         methods: Sequence[str] = (), at_once: int | None = None) -> Gate:
    return Gate(re.compile(pattern), frozenset(methods), check, max_bytes, at_once)

#: What a refused request over a gate's `at_once` is told to wait before trying again.
BUSY_RETRY_AFTER_S = 5


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int) -> None:
        # The rest of the body is never read: the connection cannot carry another request.
        super().__init__(413, f"request body larger than {max_bytes} bytes",
                         headers={"Connection": "close"})


class Guard:
    """The ASGI middleware; the first matching gate applies, else the default cap."""

    def __init__(self, app: ASGIApp, gates: Sequence[Gate]) -> None:
        self.app = app
        self.gates = tuple(gates)
        #: Requests in progress through each gate that has `at_once`.
        self._busy = {g: 0 for g in self.gates if g.at_once is not None}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        found, parts = next(((g, p) for g in self.gates
                             if (p := g.match(method, path)) is not None), (None, {}))
        max_bytes = found.max_bytes if found is not None else DEFAULT_MAX_BYTES
        headers = dict(scope["headers"])
        if found is not None and found.check is not None:
            refusal = found.check(bearer(headers.get(b"authorization")), parts)
            if refusal is not None:
                await answer_and_close(send, *refusal)
                return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await answer_and_close(send, 400, "Content-Length is not a number")
                return
            if length > max_bytes:
                await answer_and_close(send, 413, f"request body larger than {max_bytes} bytes")
                return

        if found is not None and found.at_once is not None:
            if self._busy[found] >= found.at_once:
                await answer_and_close(
                    send, 503, f"{found.at_once} such requests are in progress, the most "
                    f"taken at once; try again in {BUSY_RETRY_AFTER_S} s",
                    retry_after_s=BUSY_RETRY_AFTER_S)
                return
            self._busy[found] += 1
            try:
                await self._pass(scope, receive, send, max_bytes)
            finally:
                self._busy[found] -= 1
            return
        await self._pass(scope, receive, send, max_bytes)

    async def _pass(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        """On to the app, the body stopped at `max_bytes`."""
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise BodyTooLarge(max_bytes)
            return message

        await self.app(scope, counted, send)


def bearer(header: bytes | None) -> str | None:
    if header is None:
        return None
    scheme, _, value = header.decode("latin-1").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


async def answer_and_close(send: Send, status: int, detail: str, *,
                           retry_after_s: int | None = None) -> None:
    """A JSON refusal, closing the connection: the request's body was not read to its end."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()),
               # The body was not read: the connection cannot carry another request.
               (b"connection", b"close")]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if retry_after_s is not None:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
