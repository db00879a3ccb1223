"""A request's head is bounded, against the real server and raw sockets (httptools itself
sets no limit: before these, 3 s of header lines grew the process by 600 MB):

- a request target over 8 KiB gets 414, over 100 header lines or 64 KiB of headers 431,
  and chunked trailers count as headers; the connection is closed, the rest never read;
- a client pipelining thousands of requests is cut off after the 16 waiting ones, while a
  few pipelined requests are all answered in order.
"""

from __future__ import annotations

import select
import socket
import time
from functools import partial

import anyio
import httpx
import psutil
import pytest

from dasscod.listener.app import create_app
from dasscod.listener.serve import MAX_HEADERS, MAX_PIPELINED
from dasscod.metrics import REGISTRY
from dasscod.store import Stores
from tests.serving import serving

SECRET = "head-test-secret-0123456789abcdefgh"
SECONDS = 3.0


def flood(port: int, start: bytes, filler: bytes) -> tuple[str, int, bool]:
    """Send `start`, then `filler` again and again for up to SECONDS, until the server
    answers or closes. Returns the status line, the bytes sent, and whether it closed."""
    sent = 0
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(start)
        sock.setblocking(False)
        while time.monotonic() - began < SECONDS:
            readable, writable, _ = select.select([sock], [sock], [], 1)
            if readable:
                break
            if writable:
                try:
                    sent += sock.send(filler)
                except (BrokenPipeError, ConnectionResetError):
                    break
        sock.setblocking(True)
        sock.settimeout(5)
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
            closed = True
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            closed = False
    return answer.split(b"\r\n", 1)[0].decode(), sent, closed


FLOODS = [
    ("a long request target", b"GET /healthz?", b"a=b&" * 4096, "414"),
    ("many header lines", b"GET /healthz HTTP/1.1\r\nHost: t\r\n", b"X-A: b\r\n" * 4096, "431"),
    ("one endless header", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: ", b"b" * 65536, "431"),
]


@pytest.mark.parametrize(("what", "start", "filler", "status"), FLOODS,
                         ids=[f[0] for f in FLOODS])
async def test_an_endless_head_is_refused(stores: Stores, what: str, start: bytes,
                                          filler: bytes, status: str) -> None:
    me = psutil.Process()
    refused_before = REGISTRY.get_sample_value(
        "dasscod_listener_cut_off_total", {"reason": "head_too_large"}) or 0
    async with serving(create_app(stores, SECRET)) as port:
        before = me.memory_info().rss
        line, sent, closed = await anyio.to_thread.run_sync(partial(flood, port, start, filler))
        growth = me.memory_info().rss - before
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200
    print(f"{what}: {line!r} after {sent} bytes sent; rss growth {growth} bytes")
    assert line.startswith(f"HTTP/1.1 {status} "), line
    assert closed
    assert sent < 8 << 20  # socket buffers, not the seconds of flood
    assert growth < 20 << 20, growth
    assert REGISTRY.get_sample_value(
        "dasscod_listener_cut_off_total", {"reason": "head_too_large"}) == refused_before + 1


async def test_endless_trailers_cut_the_connection(stores: Stores) -> None:
    """Trailers come after the headers, while the request is being answered: over the limit
    the connection is cut (405 for the route is answered first, or nothing)."""
    start = (b"POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"1\r\nx\r\n0\r\n")
    async with serving(create_app(stores, SECRET)) as port:
        _, sent, closed = await anyio.to_thread.run_sync(
            partial(flood, port, start, b"X-A: b\r\n" * 4096))
    assert closed
    assert sent < 8 << 20


async def test_a_header_count_at_the_limit_is_served(stores: Stores) -> None:
    headers = {f"x-extra-{i}": "v" * 100 for i in range(MAX_HEADERS - 10)}
    async with serving(create_app(stores, SECRET)) as port, httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}"
    ) as client:
        assert (await client.get("/healthz", headers=headers)).status_code == 200


def pipeline(port: int, count: int) -> tuple[int, bool]:
    """Send `count` GET /healthz at once on one connection; returns the answers read and
    whether the server closed the connection."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" * count)
        sock.settimeout(5)
        answers = b""
        closed = False
        try:
            while answers.count(b"HTTP/1.1 200 ") < count:
                data = sock.recv(1 << 16)
                if not data:
                    closed = True
                    break
                answers += data
        except ConnectionResetError:
            closed = True
    return answers.count(b"HTTP/1.1 200 "), closed


async def test_a_client_pipelining_thousands_is_cut_off(stores: Stores) -> None:
    async with serving(create_app(stores, SECRET)) as port:
        few, few_closed = await anyio.to_thread.run_sync(pipeline, port, 10)
        many, many_closed = await anyio.to_thread.run_sync(pipeline, port, 20_000)
    assert (few, few_closed) == (10, False)
    assert many_closed
    assert many <= MAX_PIPELINED + 2, many
