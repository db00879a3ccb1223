"""The intake API takes at most `intake.api_uploads_at_once` uploads at once: each can hold
about twice `api_max_mb` of disk while it is taken, so together they are bounded. One more is
answered 503 with Retry-After from its headers (its body is never read), and a slot freed by a
finished or abandoned upload is taken by the next. Against the real server, over sockets."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
from anyio.abc import SocketStream

from dasscod.listener.app import create_app
from dasscod.store import Stores
from tests.integration.test_listener_slow_bodies import INTAKE_TOKEN, MULTIPART, SECRET, NoIntake
from tests.serving import serving

AT_ONCE = 2


async def start_upload(port: int) -> SocketStream:
    """An upload that has sent its headers and the start of its body, and goes on later."""
    conn = await anyio.connect_tcp("127.0.0.1", port)
    head = ("POST /api/v1/assets HTTP/1.1\r\nHost: t\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n"
            f"Authorization: Bearer {INTAKE_TOKEN}\r\nContent-Length: 900000\r\n\r\n").encode()
    await conn.send(head + MULTIPART + b"x" * 1000)
    return conn


async def test_uploads_over_the_limit_get_503_with_retry_after_until_one_ends(
    stores: Stores, tmp_path: Path
) -> None:
    app = create_app(stores, SECRET, intake=NoIntake(tmp_path), intake_token=INTAKE_TOKEN,
                     intake_max_mb=10.0, intake_at_once=AT_ONCE)
    async with serving(app, body_timeout_s=30) as port:
        holding = [await start_upload(port) for _ in range(AT_ONCE)]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers={"Authorization": f"Bearer {INTAKE_TOKEN}"}) as c:

            async def one_more() -> httpx.Response:
                # Unreadable as an upload: past the limit, the route answers 4xx for it.
                return await c.post("/api/v1/assets", content=b"{}",
                                    headers={"Content-Type": "application/json"})

            with anyio.fail_after(10):
                refused = await one_more()
                # The holders' headers are in before ours: the refusal is not a race.
                while refused.status_code != 503:
                    await anyio.sleep(0.02)
                    refused = await one_more()
            assert refused.headers["Retry-After"] == "5"
            assert refused.headers["Connection"] == "close"
            assert "try again" in refused.json()["detail"]
            # A health check and the other routes are not held up by the full intake.
            assert (await c.get("/healthz")).status_code == 200

            # One uploader goes away: its slot is free again for the next.
            await holding.pop().aclose()
            with anyio.fail_after(10):
                taken = await one_more()
                while taken.status_code == 503:
                    await anyio.sleep(0.02)
                    taken = await one_more()
            assert taken.status_code in (400, 422), taken.text
        for conn in holding:
            await conn.aclose()
