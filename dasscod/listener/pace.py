"""A time limit on every request body, so a client that trickles its body cannot hold a
connection (and the request's buffers) for ever.

The guard (`dasscod.listener.guard`) caps a body's size and uvicorn's protocol
(`dasscod.listener.serve`) the time to send headers; neither bounds how long the body
takes once the headers are in. `BodyPace` wraps the whole app: the body must arrive within
`timeout_s` of the request's start, plus one second for every `min_rate` bytes delivered so
far (the rule of Apache's mod_reqtimeout: a steady upload of any size at `min_rate` or faster
goes through; anything slower is cut off). A request past its deadline gets 408 and its
connection is closed (the rest of its body is never read).

The limit is raised inside the app's own `receive()`, as an `HTTPException`: the route stops
where it is (its clean-up runs, as for a client that went away) and FastAPI answers 408.
Should the app not turn it into an answer, the wrapper answers 408 itself.
"""

from __future__ import annotations

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dasscod.listener.guard import answer_and_close


class BodyTooSlow(HTTPException):
    def __init__(self, timeout_s: float, min_rate: int, seen: int) -> None:
        super().__init__(
            408,
            f"request body too slow: {seen} bytes arrived, the body must arrive within "
            f"{timeout_s:g} s plus 1 s per {min_rate} bytes; send it at once",
            # The rest of the body is never read: the connection cannot carry another request.
            headers={"Connection": "close"},
        )


class BodyPace:
    """ASGI middleware: `timeout_s` for a body, plus one second per `min_rate` bytes."""

    def __init__(self, app: ASGIApp, *, timeout_s: float, min_rate: int) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.min_rate = min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = anyio.current_time()
        seen = 0
        complete = False
        answered = False

        async def paced() -> Message:
            nonlocal seen, complete
            if complete:  # after the body: only the disconnect (a streamed answer waits on it)
                return await receive()
            left = started + self.timeout_s + seen / self.min_rate - anyio.current_time()
            if left <= 0:
                raise BodyTooSlow(self.timeout_s, self.min_rate, seen)
            with anyio.move_on_after(left) as waiting:
                message = await receive()
            if waiting.cancelled_caught:
                raise BodyTooSlow(self.timeout_s, self.min_rate, seen)
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
            return message

        async def sending(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
            await send(message)

        try:
            await self.app(scope, paced, sending)
        except BodyTooSlow as exc:
            if answered:
                raise
            await answer_and_close(send, exc.status_code, exc.detail)
