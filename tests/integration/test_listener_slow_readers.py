"""A client that does not read its answers cannot hold a connection for ever (against the
real server, raw sockets): once the answer's writing has been blocked for
`listener.send_timeout_s`, the connection is dropped."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import anyio
import httpx

from dasscod.devstack.assets import add_asset
from dasscod.listener.app import create_app
from dasscod.metrics import REGISTRY
from dasscod.store import Stores
from dasscod.tokens import JobClaims, issue
from tests.serving import serving

SECRET = "slow-reader-test-secret-0123456789abc"
GUID = "slow-reader-asset"
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


async def test_when_full_a_download_nobody_reads_makes_room(
    stores: Stores, tmp_path: Path
) -> None:
    """Every connection taken by jobs that started downloading a file (8 MB, streamed) and
    stopped reading, their answers blocked mid-way: a newcomer closes the one blocked
    longest instead of being refused."""
    await add_asset(stores, tmp_path, GUID, files={"a.tif": b"\0" * (8 << 20)})
    token = issue(SECRET, JobClaims(GUID, "load", 1), ttl_s=60)
    before = REGISTRY.get_sample_value("dasscod_listener_cut_off_total",
                                       {"reason": "evicted"}) or 0
    async with serving(create_app(stores, SECRET), send_timeout_s=60.0,
                       max_connections=2) as port:
        stalled = [stall(port, token) for _ in range(2)]
        try:
            # Until the server's writes to them block they are busy, and a newcomer is
            # refused; then the newcomer makes room.
            with anyio.fail_after(10):
                while (health := await ask_healthz(port)) is None:
                    pass
        finally:
            for sock in stalled:
                sock.close()
    assert health == 200
    assert REGISTRY.get_sample_value("dasscod_listener_cut_off_total",
                                     {"reason": "evicted"}) == before + 1


def stall(port: int, token: str) -> socket.socket:
    """A connection that asks for the asset's file and never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /api/v1/assets/{GUID}/files/a.tif HTTP/1.1\r\nHost: t\r\n"
                 f"Authorization: Bearer {token}\r\n\r\n".encode())
    return sock


async def ask_healthz(port: int) -> int | None:
    """/healthz on a new connection; None if the server closed it (it was full)."""
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            return (await client.get("/healthz")).status_code
    except httpx.TransportError:
        return None
