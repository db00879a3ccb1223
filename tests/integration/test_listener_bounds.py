"""Nothing is read before it is authenticated and bounded, against the real server (uvicorn
with the daemon's listener configuration, raw sockets as the attacker):

- 1 GB streamed without credentials to every route that takes a body gets 401 (or 403 where
  the route is off) at once: the process grows by less than 20 MB and nothing is written.
- With valid credentials, a body over its route's cap gets 413 at the cap, declared or
  streamed (chunked), and a file PUT stops at the size the job reported.
- Two uploads of one file at once (a retry overlapping its first try) store it whole.
- An agent credential opens only the routes of the cluster it belongs to, from the
  headers: another cluster's routes get 403 before the body.
- 2,000 idle connections are closed after the header timeout while /healthz answers, and
  when all `max_connections` are taken the one that waited longest for a request makes room
  (a newcomer is closed only when every connection is busy with a request).
"""

from __future__ import annotations

import hashlib
import resource
import select
import socket
import tempfile
import zlib
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil
import pytest

from dasscod.cluster.configured import build_clusters
from dasscod.listener.app import create_app
from dasscod.metrics import REGISTRY
from dasscod.pipeline import Event, JobEvent
from dasscod.pipelines import load_pipelines
from dasscod.services.agent import AgentService
from dasscod.services.launch import Launcher
from dasscod.settings import ClusterSettings
from dasscod.store import Stores
from dasscod.tokens import JobClaims, issue
from tests.conftest import make_metadata, make_track
from tests.serving import serving

SECRET = "bounds-test-secret-0123456789abcdefgh"
INTAKE_TOKEN = "intake-token-0123456789abcdef"
CONTROL_TOKEN = "control-token-0123456789abcdef"
GIB = 1 << 30
CHUNK = b"\0" * (1 << 20)
GUID, CHILD = "bounds-asset", "bounds-asset-jpeg"
DATA = b"jpeg bytes " * 1000


#: The start of a well-formed multipart body whose one file part then goes on and on.
MULTIPART = (b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.tif"\r\n'
             b"Content-Type: application/octet-stream\r\n\r\n")


def stream(port: int, head: str, *, chunked: bool = False, total: int = GIB) -> tuple[str, int]:
    """Send `head` and then up to `total` bytes of body, as fast as the server takes them,
    until it answers or closes. Returns the status line and how many body bytes went out."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head.encode())
        if "multipart" in head:
            sock.sendall(b"%x\r\n" % len(MULTIPART) + MULTIPART + b"\r\n" if chunked
                         else MULTIPART)
        sock.setblocking(False)
        answer = b""
        while sent < total:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable:
                break
            if not writable:
                raise AssertionError(f"the server neither read nor answered after {sent} bytes")
            piece = CHUNK if not chunked else b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n"
            try:
                sent += sock.send(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        sock.settimeout(10)
        try:
            while b"\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except ConnectionResetError:
            pass
    return answer.split(b"\r\n", 1)[0].decode(), sent


def request_head(method: str, path: str, token: str | None = None, *, chunked: bool = False,
                 content_type: str = "application/json") -> str:
    lines = [f"{method} {path} HTTP/1.1", "Host: t", f"Content-Type: {content_type}"]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {GIB}")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return "\r\n".join(lines) + "\r\n\r\n"


def files_under(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob("*") if p.is_file()]


class Staging:
    """The intake API's staging side, counting what it is handed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.accepted = 0

    def held(self) -> str | None:
        return None

    def staging_folder(self) -> Path:
        folder = Path(tempfile.mkdtemp(dir=self.root))
        return folder

    async def accept(self, staged: Path) -> Any:
        self.accepted += 1
        raise AssertionError("nothing may reach the intake in these tests")


@pytest.fixture
async def setup(stores: Stores, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Path, Staging]:
    """The app (served by each test itself: a task group cannot span a fixture's setup and
    teardown), the test's folder and the intake's staging side."""
    await stores.track.insert(make_track(GUID))
    await stores.metadata.insert(make_metadata(GUID))
    # Uploads spool here (Starlette's temporary files), so disk growth is seen.
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    staging = Staging(tmp_path / "staging")
    staging.root.mkdir()
    app = create_app(stores, SECRET, intake=staging, intake_token=INTAKE_TOKEN,
                     intake_max_mb=1.0, files_root=tmp_path / "files",
                     control_tokens={"alice": CONTROL_TOKEN})
    return app, tmp_path, staging


#: Every route that takes a body, as an attacker without credentials would try it.
UNAUTHENTICATED = [
    ("POST", "/api/v1/jobs/finished", 401),
    ("POST", "/api/v1/jobs/started", 401),
    ("POST", f"/api/v1/assets/{GUID}/metadata", 401),
    ("POST", f"/api/v1/assets/{GUID}/barcode", 401),
    ("POST", f"/api/v1/assets/{GUID}/files", 401),
    ("PUT", f"/api/v1/assets/{GUID}/files/a.tif", 401),
    ("POST", "/api/v1/derivatives", 401),
    ("POST", "/api/v1/assets", 401),
    ("POST", "/api/v1/agent/hpc/claim", 401),
    ("POST", "/api/v1/control/pause", 401),
]


async def test_a_gigabyte_without_credentials_is_refused_unread(
    setup: tuple[Any, Path, Staging]
) -> None:
    app, tmp_path, staging = setup
    async with serving(app) as port:
        await _refused_unread(port, tmp_path, staging)


async def _refused_unread(port: int, tmp_path: Path, staging: Staging) -> None:
    me = psutil.Process()
    before = me.memory_info().rss
    results: dict[str, tuple[str, int]] = {}
    for method, path, _ in UNAUTHENTICATED:
        for chunked in (False, True):
            head = request_head(method, path, chunked=chunked,
                                content_type="multipart/form-data; boundary=x")
            results[f"{method} {path} chunked={chunked}"] = await anyio.to_thread.run_sync(
                partial(stream, port, head, chunked=chunked))
    growth = me.memory_info().rss - before
    for (method, path, status), chunked in ((r, c) for r in UNAUTHENTICATED
                                            for c in (False, True)):
        line, sent = results[f"{method} {path} chunked={chunked}"]
        assert line.startswith(f"HTTP/1.1 {status} "), (method, path, line)
        assert sent < 64 << 20, (method, path, sent)  # socket buffers, never the gigabyte
    print(f"rss growth under the 1 GB streams: {growth} bytes")  # the issue's number
    assert growth < 20 << 20, growth
    assert files_under(tmp_path / "spool", tmp_path / "staging", tmp_path / "files") == []
    assert staging.accepted == 0


async def test_authenticated_bodies_over_the_cap_get_413_at_the_cap(
    setup: tuple[Any, Path, Staging], stores: Stores
) -> None:
    app, tmp_path, _ = setup
    async with serving(app) as port:
        await _over_the_cap(port, tmp_path, stores)


async def _over_the_cap(port: int, tmp_path: Path, stores: Stores) -> None:
    job = issue(SECRET, JobClaims(GUID, "derivatives", 1), ttl_s=60)
    cases = [
        request_head("POST", "/api/v1/jobs/finished", job),
        request_head("POST", "/api/v1/jobs/finished", job, chunked=True),
        request_head("POST", "/api/v1/assets", INTAKE_TOKEN,
                     content_type="multipart/form-data; boundary=x"),
        request_head("POST", "/api/v1/assets", INTAKE_TOKEN, chunked=True,
                     content_type="multipart/form-data; boundary=x"),
        request_head("POST", "/api/v1/control/pause", CONTROL_TOKEN, chunked=True),
    ]
    for head in cases:
        line, sent = await anyio.to_thread.run_sync(
            partial(stream, port, head, chunked="chunked" in head))
        assert line.startswith("HTTP/1.1 413 "), (head.splitlines()[0], line)
        assert sent < 64 << 20
    assert files_under(tmp_path / "spool", tmp_path / "staging", tmp_path / "files") == []
    track = await stores.track.get(GUID)
    assert track is not None and track.job("load").status.name == "WAITING"


async def test_a_file_put_stops_at_the_reported_size(
    setup: tuple[Any, Path, Staging], stores: Stores
) -> None:
    app, tmp_path, _ = setup
    async with serving(app) as port:
        await _put_stops(port, tmp_path, stores)


async def _put_stops(port: int, tmp_path: Path, stores: Stores) -> None:
    token = issue(SECRET, JobClaims(GUID, "derivatives", 1), ttl_s=60)
    await stores.track.apply(GUID, [JobEvent("derivatives", Event.CLAIM, cluster="local")],
                             cause="test")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        answer = await client.post("/api/v1/derivatives", json=make_metadata(
            CHILD, parent_guid=GUID).model_dump(mode="json"))
        assert answer.status_code == 200, answer.text
        answer = await client.post(f"/api/v1/assets/{CHILD}/files", json={
            "name": "d.jpg", "type": "jpg", "check_sum": zlib.crc32(DATA),
            "file_size": len(DATA) / 1e6, "sha256": hashlib.sha256(DATA).hexdigest()})
        assert answer.status_code == 200, answer.text
        short = await client.put(f"/api/v1/assets/{CHILD}/files/d.jpg", content=DATA[:-10])
        assert short.status_code == 422 and "reported size" in short.text
    line, sent = await anyio.to_thread.run_sync(lambda: stream(
        port, request_head("PUT", f"/api/v1/assets/{CHILD}/files/d.jpg", token, chunked=True),
        chunked=True))
    assert line.startswith("HTTP/1.1 413 "), line
    assert sent < 64 << 20
    assert files_under(tmp_path / "files") == []
    track = await stores.track.get(CHILD)
    assert track is not None and not track.temporary_path_local


IDLE = 2000


def cut_off(reason: str) -> float:
    """`dasscod_listener_cut_off_total` for `reason`, as /metrics shows it."""
    return REGISTRY.get_sample_value("dasscod_listener_cut_off_total", {"reason": reason}) or 0


async def test_idle_connections_are_closed_while_healthz_answers(stores: Stores) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * IDLE + 256  # both ends are in this process
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"open-file limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    app = create_app(stores, SECRET)
    try:
        async with serving(app, header_timeout_s=2.0, max_connections=IDLE + 50) as port:
            idle = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(IDLE)]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                with anyio.fail_after(5):
                    health = await client.get("/healthz")
                assert health.status_code == 200
            closed = 0
            with anyio.fail_after(30):
                for conn in idle:
                    try:
                        data = await conn.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        closed += 1
                    else:
                        raise AssertionError(f"an idle connection got {data!r}")
            assert closed == IDLE
            for conn in idle:
                await conn.aclose()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_when_full_the_longest_waiting_connection_makes_room(stores: Stores) -> None:
    """Slowloris: 60 connections that never send a request against a cap of 20. Each new one
    closes the one that has waited longest, so the listener stays reachable: /healthz and a
    callback's 401 are answered, and the 20 newest attackers are the ones still held."""
    app = create_app(stores, SECRET)
    evicted_before = cut_off("evicted")
    async with serving(app, header_timeout_s=30.0, max_connections=20) as port:
        idle = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(60)]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            with anyio.fail_after(5):
                health = await client.get("/healthz")
                refused = await client.post("/api/v1/jobs/finished", json={})
        assert health.status_code == 200
        assert refused.status_code == 401
        closed = []
        for conn in idle:
            with anyio.move_on_after(0.2):
                try:
                    await conn.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    closed.append(conn)
        # The two answered requests made room twice more: 42 of the 60 are gone, oldest first.
        assert closed == idle[:len(closed)] and 40 <= len(closed) <= 42, len(closed)
        assert cut_off("evicted") - evicted_before == len(closed)
        for conn in idle:
            await conn.aclose()


async def test_when_every_connection_is_busy_a_new_one_is_closed(stores: Stores) -> None:
    """Connections in the middle of a request are not taken: the newcomer is closed."""
    app = create_app(stores, SECRET)
    token = issue(SECRET, JobClaims(GUID, "load", 1), ttl_s=60)
    busy_head = (f"POST /api/v1/jobs/finished HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
                 f"{token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    async with serving(app, header_timeout_s=30.0, body_timeout_s=30.0,
                       max_connections=5) as port:
        held = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(5)]
        for conn in held:
            await conn.send(busy_head.encode())  # headers in, the body never comes
        extra = await anyio.connect_tcp("127.0.0.1", port)
        with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await extra.receive()
        for conn in held:
            with anyio.move_on_after(0.2) as waiting:
                await conn.receive()
            assert waiting.cancelled_caught, "a busy connection was closed"
        for conn in (*held, extra):
            await conn.aclose()



NORTH, SOUTH = "north-agent-credential-0123456789", "south-agent-credential-0123456789"


async def test_an_agent_credential_opens_only_its_own_cluster_before_the_body(
    stores: Stores
) -> None:
    """Two pull clusters: the north agent's credential on the south cluster's routes is
    refused from the headers (403, the gigabyte unread), as is an unknown cluster; on its
    own cluster the body is read, up to the agent cap."""
    clusters = build_clusters({
        name: ClusterSettings(scheduler="pull", agent_token=token, work_root="/c/work",
                              state_dir="/c/jobs")
        for name, token in (("north", NORTH), ("south", SOUTH))})
    launcher = Launcher(stores=stores, clusters=clusters, pipelines=load_pipelines(),
                        callback_base="http://daemon/api/v1", token_secret=SECRET,
                        token_ttl_s=3600)
    app = create_app(stores, SECRET, agent=AgentService(stores, clusters, launcher.job_spec))
    cases = [
        ("/api/v1/agent/south/claim", NORTH, "403"),
        ("/api/v1/agent/south/report", NORTH, "403"),
        ("/api/v1/agent/nowhere/claim", NORTH, "403"),
        ("/api/v1/agent/north/claim", SOUTH, "403"),
        ("/api/v1/agent/north/claim", NORTH, "413"),
    ]
    async with serving(app) as port:
        for path, token, status in cases:
            for chunked in (False, True):
                line, sent = await anyio.to_thread.run_sync(partial(
                    stream, port, request_head("POST", path, token, chunked=chunked),
                    chunked=chunked))
                assert line.startswith(f"HTTP/1.1 {status} "), (path, token, chunked, line)
                assert sent < 64 << 20, (path, sent)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            mine = await client.post("/api/v1/agent/north/claim", json={"max": 1},
                                     headers={"Authorization": f"Bearer {NORTH}"})
            theirs = await client.get("/api/v1/agent/south/jobs",
                                      headers={"Authorization": f"Bearer {NORTH}"})
    assert mine.status_code == 200 and mine.json() == []
    assert theirs.status_code == 403 and "south" in theirs.json()["detail"]


async def test_two_puts_of_one_file_at_once_store_it_whole(
    setup: tuple[Any, Path, Staging], stores: Stores
) -> None:
    """A job's upload retried while its first try is still sending: the first try's late
    bytes must not land in the file the second stored (they once shared one temporary file,
    and the first then failed with a 500)."""
    app, tmp_path, _ = setup
    token = issue(SECRET, JobClaims(GUID, "derivatives", 1), ttl_s=60)
    await stores.track.apply(GUID, [JobEvent("derivatives", Event.CLAIM, cluster="local")],
                             cause="test")
    path = f"/api/v1/assets/{CHILD}/files/d.jpg"
    async with serving(app) as port, httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
    ) as client:
        assert (await client.post("/api/v1/derivatives", json=make_metadata(
            CHILD, parent_guid=GUID).model_dump(mode="json"))).status_code == 200
        assert (await client.post(f"/api/v1/assets/{CHILD}/files", json={
            "name": "d.jpg", "type": "jpg", "check_sum": zlib.crc32(DATA),
            "file_size": len(DATA) / 1e6, "sha256": hashlib.sha256(DATA).hexdigest()})
        ).status_code == 200
        first = await anyio.connect_tcp("127.0.0.1", port)
        async with first:
            half = len(DATA) // 2
            await first.send((f"PUT {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
                              f"{token}\r\nContent-Length: {len(DATA)}\r\n\r\n").encode()
                             + DATA[:half])
            with anyio.fail_after(5):
                # Polled: the server offers no event for "its write has begun".
                while not list((tmp_path / "files").rglob("*.part")):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            second = await client.put(path, content=DATA)
            assert second.status_code == 200, second.text
            await first.send(DATA[half:])
            with anyio.fail_after(5):
                answer = await first.receive()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert (tmp_path / "files" / CHILD / "d.jpg").read_bytes() == DATA
    assert list((tmp_path / "files").rglob("*.part")) == []
