"""A client that does not read its answers cannot hold a connection for ever (against the
real server, raw sockets): once the answer's writing has been blocked for
`listener.send_timeout_s`, the connection is dropped."""

from __future__ import annotations

import socket
import time

import anyio
import httpx

from dasscod.listener.app import create_app
from dasscod.metrics import REGISTRY
from dasscod.store import Stores
from tests.serving import serving

SECRET = "slow-reader-test-secret-0123456789abc"
SEND_TIMEOUT_S = 1.0


ASKS = 200


def not_reading(port: int) -> tuple[float, int, bool]:
    """Ask for the OpenAPI document ASKS times (more than the socket buffers hold) without
    reading for a while, then read: returns the seconds until the end of the stream (the
    server dropped us), the bytes read and whether the server reset the connection."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        began = time.monotonic()
        sock.settimeout(0.2)
        for _ in range(ASKS):
            time.sleep(0.005)  # one at a time (not a pipeline, which is cut off at 16)
            try:
                sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: t\r\n\r\n")
            except TimeoutError:
                break  # the server stopped reading: its answers are stuck
        time.sleep(SEND_TIMEOUT_S + 1.0)  # the attacker's pause: it reads nothing
        sock.settimeout(10)
        got = 0
        try:
            while data := sock.recv(1 << 16):
                got += len(data)
        except ConnectionResetError:
            return time.monotonic() - began, got, True
        return time.monotonic() - began, got, False


async def test_a_client_that_does_not_read_is_dropped(stores: Stores) -> None:
    before = REGISTRY.get_sample_value("dasscod_listener_cut_off_total",
                                       {"reason": "not_reading"}) or 0
    async with serving(create_app(stores, SECRET), send_timeout_s=SEND_TIMEOUT_S) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            document = len((await client.get("/openapi.json")).content)
        ended, got, reset = await anyio.to_thread.run_sync(not_reading, port)
    assert reset  # dropped, not answered to the end once the client read again
    assert got < ASKS * document
    assert ended < SEND_TIMEOUT_S + 5
    assert REGISTRY.get_sample_value("dasscod_listener_cut_off_total",
                                     {"reason": "not_reading"}) == before + 1
