"""A body trickled after valid headers is cut off with 408 (`listener.body_timeout_s`, plus a
second for every `listener.body_min_rate` bytes), against the real server and raw sockets:

- 120 clients trickling their bodies (declared length, chunked, a multipart upload) all
  get 408 and a closed connection at the limit, while /healthz and a real job callback
  sent in the middle of them are answered at once;
- a trickled file PUT (written to disk as it comes) gets 408 and leaves no file;
- a body sent slowly but steadily at the minimum rate goes through, although it takes
  longer than `body_timeout_s`.
"""

from __future__ import annotations

import hashlib
import statistics
import zlib
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil
import pytest
from anyio.abc import SocketStream

from dasscod.listener.app import create_app
from dasscod.pipeline import Event, JobEvent
from dasscod.store import Stores
from dasscod.tokens import JobClaims, issue
from tests.conftest import make_metadata, make_track
from tests.serving import serving

SECRET = "slow-body-test-secret-0123456789abcdef"
INTAKE_TOKEN = "intake-token-0123456789abcdef"
GUID = "slow-body-asset"
TIMEOUT_S = 1.0
DRIP_S = 0.1
MULTIPART = (b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.tif"\r\n'
             b"Content-Type: application/octet-stream\r\n\r\n")


class NoIntake:
    """The intake API's staging side: a trickled upload must never get this far."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def held(self) -> str | None:
        return None

    def staging_folder(self) -> Path:
        raise AssertionError("a trickled upload reached the staging folder")

    async def accept(self, staged: Path) -> Any:
        raise AssertionError("a trickled upload reached the intake")


def head(path: str, token: str, *, chunked: bool = False,
         content_type: str = "application/json", length: int = 100_000) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: t", f"Content-Type: {content_type}",
             f"Authorization: Bearer {token}",
             "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def trickle(port: int, start: bytes, drop: bytes) -> tuple[str, float, bool]:
    """Send `start`, then `drop` every DRIP_S until the server answers. Returns the status
    line, the seconds from connecting to the answer, and whether the server then closed."""
    began = anyio.current_time()
    conn = await anyio.connect_tcp("127.0.0.1", port)
    answer = b""
    closed = False
    async with conn, anyio.create_task_group() as tg:
        await conn.send(start)
        tg.start_soon(_drip, conn, drop)
        with anyio.fail_after(TIMEOUT_S + 10):
            try:
                while b"\r\n" not in answer:
                    answer += await conn.receive()
                answered = anyio.current_time() - began
                while True:
                    await conn.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                closed = True
        tg.cancel_scope.cancel()
    return answer.split(b"\r\n", 1)[0].decode(), answered, closed


async def _drip(conn: SocketStream, drop: bytes) -> None:
    while True:
        await anyio.sleep(DRIP_S)  # the attacker's pace, not a wait for the server
        try:
            await conn.send(drop)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return


@pytest.fixture
async def app(stores: Stores, tmp_path: Path) -> Any:
    await stores.track.insert(make_track(GUID))
    await stores.metadata.insert(make_metadata(GUID))
    await stores.track.apply(GUID, [JobEvent("load", Event.CLAIM, cluster="local")],
                             cause="test")
    # Every trickling upload must reach the body's pace, not the uploads-at-once limit.
    return create_app(stores, SECRET, intake=NoIntake(tmp_path), intake_token=INTAKE_TOKEN,
                      intake_max_mb=10.0, intake_at_once=100)


async def test_trickled_bodies_get_408_while_callbacks_are_answered(
    app: Any, stores: Stores
) -> None:
    job = issue(SECRET, JobClaims(GUID, "load", 1), ttl_s=60)
    kinds = [
        (head("/api/v1/jobs/finished", job), b"x"),
        (head("/api/v1/jobs/finished", job, chunked=True), b"1\r\nx\r\n"),
        (head("/api/v1/assets", INTAKE_TOKEN, content_type="multipart/form-data; boundary=x")
         + MULTIPART, b"x"),
    ]
    clients = [kind for kind in kinds for _ in range(40)]
    results: list[tuple[str, float, bool]] = []
    me = psutil.Process()
    before = me.memory_info().rss
    async with serving(app, body_timeout_s=TIMEOUT_S) as port:

        async def one(start: bytes, drop: bytes) -> None:
            results.append(await trickle(port, start, drop))

        async with anyio.create_task_group() as tg:
            for start, drop in clients:
                tg.start_soon(one, start, drop)
            await anyio.sleep(TIMEOUT_S / 2)  # every trickler is connected and sending
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                with anyio.fail_after(TIMEOUT_S / 2):
                    health = await client.get("/healthz")
                    queued = await client.post(
                        "/api/v1/jobs/queued",
                        json={"asset_guid": GUID, "job": "load", "hpc_job_id": "4711"},
                        headers={"Authorization": f"Bearer {job}"})
            assert health.status_code == 200
            assert queued.status_code == 200, queued.text
            assert not results, "a trickler was answered before its time"
    growth = me.memory_info().rss - before
    assert len(results) == len(clients)
    for line, answered, closed in results:
        assert line.startswith("HTTP/1.1 408 "), line
        assert closed
        assert TIMEOUT_S <= answered < TIMEOUT_S + 2.0, answered
    times = sorted(answered for _, answered, _ in results)
    # The issue's numbers: time from connecting to the 408, and what the tricklers cost.
    print(f"{len(clients)} tricklers: 408 after median {statistics.median(times):.2f} s, "
          f"max {times[-1]:.2f} s (limit {TIMEOUT_S} s); rss growth {growth} bytes")
    track = await stores.track.get(GUID)
    assert track is not None
    assert track.job("load").status.name == "QUEUED"
    assert track.job("load").hpc_job_id == "4711"


async def test_a_slow_but_steady_body_goes_through(app: Any, stores: Stores) -> None:
    """2,000 bytes/s against a minimum of 1,000 bytes/s: 1.5 s for the body, over the 0.5 s
    base limit, is allowed (each 1,000 bytes bought a second)."""
    job = issue(SECRET, JobClaims(GUID, "load", 1), ttl_s=60)
    body = b'{"asset_guid": "%s", "job": "load", "hpc_job_id": "4712"}' % GUID.encode()
    body += b" " * (3000 - len(body))
    async with serving(app, body_timeout_s=0.5, body_min_rate=1000) as port:
        conn = await anyio.connect_tcp("127.0.0.1", port)
        async with conn:
            await conn.send(head("/api/v1/jobs/queued", job, length=len(body)))
            for offset in range(0, len(body), 200):
                await anyio.sleep(0.1)  # the client's pace: 2,000 bytes/s
                await conn.send(body[offset:offset + 200])
            with anyio.fail_after(5):
                answer = await conn.receive()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    track = await stores.track.get(GUID)
    assert track is not None and track.job("load").hpc_job_id == "4712"


async def test_a_trickled_file_put_gets_408_and_leaves_no_file(
    stores: Stores, tmp_path: Path
) -> None:
    """The route that writes the body to disk as it comes: cut at the limit, its temporary
    file removed, nothing stored."""
    await stores.track.insert(make_track(GUID))
    await stores.metadata.insert(make_metadata(GUID))
    await stores.track.apply(GUID, [JobEvent("derivatives", Event.CLAIM, cluster="local")],
                             cause="test")
    token = issue(SECRET, JobClaims(GUID, "derivatives", 1), ttl_s=60)
    child, data = f"{GUID}-jpeg", b"jpeg bytes " * 1000
    app = create_app(stores, SECRET, files_root=tmp_path / "files")
    async with serving(app, body_timeout_s=TIMEOUT_S) as port, httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
    ) as client:
        assert (await client.post("/api/v1/derivatives", json=make_metadata(
            child, parent_guid=GUID).model_dump(mode="json"))).status_code == 200
        assert (await client.post(f"/api/v1/assets/{child}/files", json={
            "name": "d.jpg", "type": "jpg", "check_sum": zlib.crc32(data),
            "file_size": len(data) / 1e6, "sha256": hashlib.sha256(data).hexdigest()})
        ).status_code == 200
        start = (f"PUT /api/v1/assets/{child}/files/d.jpg HTTP/1.1\r\nHost: t\r\n"
                 f"Authorization: Bearer {token}\r\nContent-Length: {len(data)}\r\n\r\n"
                 ).encode() + data[:100]
        line, answered, closed = await trickle(port, start, b"j")
    assert line.startswith("HTTP/1.1 408 "), line
    assert closed and TIMEOUT_S <= answered < TIMEOUT_S + 2.0
    assert [p for p in (tmp_path / "files").rglob("*") if p.is_file()] == []
    track = await stores.track.get(child)
    assert track is not None and not track.temporary_path_local
