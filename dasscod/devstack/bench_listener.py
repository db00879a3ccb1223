"""The listener under attack, one JSON line on stdout (merged into `make bench` as
"listener"). The listener runs as its own process with the default `[listener]` settings (so
its memory is its own), on SecantusDB; the attackers are raw sockets in this process:

- `tricklers`: 1000 connections with a job token, each sending its body a byte every 0.5 s:
  seconds from its headers to the 408 (median, max), the listener's memory growth, and /healthz
  and a job's callback answered meanwhile (ms);
- `held_bodies`: 1000 connections that send 250 KB of a 256 KB callback at once and stop: the
  memory growth (the bound is `max_connections` times the callback cap) and when the 408s come;
- `silent`: 3000 connections that never send a request, against `max_connections` (1024):
  /healthz meanwhile, and how many were closed to make room.
Progress to stderr."""

from __future__ import annotations

import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil
import uvicorn
from anyio.abc import ByteReceiveStream

from dasscod.devstack.assets import make_metadata, make_track
from dasscod.devstack.mongo import mongo_server
from dasscod.listener.app import create_app
from dasscod.listener.serve import listener_config
from dasscod.pipeline import Event, JobEvent
from dasscod.pipelines import load_pipelines
from dasscod.settings import ListenerSettings
from dasscod.store import Stores
from dasscod.tokens import JobClaims, issue

SECRET = "bench-listener-secret-0123456789abcdef"
GUID = "bench-listener-asset"
CONNECTIONS = 1000
SILENT = 3000
MB = 1e6


def progress(message: str) -> None:
    print(f"[bench-listener] {message}", file=sys.stderr, flush=True)


def open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


async def serve(uri: str) -> None:
    """The listener's process: the app over a fresh database, default listener settings.
    Prints its port on stdout once it listens."""
    stores = Stores.connect(uri, "bench_listener", load_pipelines())
    await stores.client.drop_database("bench_listener")
    await stores.ensure_indexes()
    await stores.track.insert(make_track(GUID))
    await stores.metadata.insert(make_metadata(GUID))
    await stores.track.apply(GUID, [JobEvent("load", Event.CLAIM, cluster="local")],
                             cause="bench")
    app = create_app(stores, SECRET, metrics_route=True)
    server = uvicorn.Server(listener_config(app, ListenerSettings(host="127.0.0.1", port=0),
                                            graceful_s=1))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        while not server.started:  # noqa: ASYNC110 -- uvicorn has no "bound" event
            await anyio.sleep(0.01)
        print(server.servers[0].sockets[0].getsockname()[1], flush=True)


class Peak:
    """The listener process's resident memory, sampled until stopped."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.base = self.process.memory_info().rss
        self.peak = self.base

    async def watch(self) -> None:
        while True:
            self.peak = max(self.peak, self.process.memory_info().rss)
            await anyio.sleep(0.1)

    @property
    def growth_mb(self) -> float:
        return round((self.peak - self.base) / MB, 1)


def head(token: str, length: int) -> bytes:
    return (f"POST /api/v1/jobs/finished HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}"
            f"\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


async def attack(port: int, start: bytes, drip: bytes | None) -> tuple[str, float]:
    """Connect, send `start`, then `drip` every 0.5 s (None: nothing more) until answered.
    Returns the status line and the seconds from `start` sent to the answer."""
    async with await anyio.connect_tcp("127.0.0.1", port) as conn, \
            anyio.create_task_group() as tg:
        await conn.send(start)
        began = time.monotonic()

        async def dripping() -> None:
            while drip is not None:
                await anyio.sleep(0.5)
                try:
                    await conn.send(drip)
                except (anyio.BrokenResourceError, OSError):
                    return

        tg.start_soon(dripping)
        answer = b""
        try:
            with anyio.fail_after(60):
                while b"\r\n" not in answer:
                    answer += await conn.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass
        tg.cancel_scope.cancel()
    return answer.split(b"\r\n", 1)[0].decode(), time.monotonic() - began


async def timed(call: Callable[[], Awaitable[httpx.Response]]) -> tuple[int, float]:
    began = time.monotonic()
    answer = await call()
    return answer.status_code, round((time.monotonic() - began) * 1000, 1)


async def under_attack(port: int, pid: int, start: bytes, drip: bytes | None,
                       *, probe: bool) -> dict[str, Any]:
    peak = Peak(pid)
    results: list[tuple[str, float]] = []
    probes: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(peak.watch)
        async with anyio.create_task_group() as attackers:
            for _ in range(CONNECTIONS):
                attackers.start_soon(_collect, results, attack(port, start, drip))
            await anyio.sleep(3)  # every attacker connected and sending
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                probes["healthz"] = await timed(lambda: client.get("/healthz"))
                if probe:
                    token = issue(SECRET, JobClaims(GUID, "load", 1), ttl_s=600)
                    probes["callback"] = await timed(lambda: client.post(
                        "/api/v1/jobs/queued", headers={"Authorization": f"Bearer {token}"},
                        json={"asset_guid": GUID, "job": "load", "hpc_job_id": "1"}))
        tg.cancel_scope.cancel()
    times = sorted(seconds for _, seconds in results)
    return {
        "connections": len(results),
        "answered_408": sum(line.startswith("HTTP/1.1 408") for line, _ in results),
        "to_408_median_s": round(statistics.median(times), 2),
        "to_408_max_s": round(times[-1], 2),
        "rss_growth_mb": peak.growth_mb,
        **{f"{name}_status_ms": value for name, value in probes.items()},
    }


async def _collect(into: list[tuple[str, float]], result: Awaitable[tuple[str, float]]) -> None:
    into.append(await result)


async def silent(port: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        before = _evicted(await client.get("/metrics"))
    held = []
    for _ in range(SILENT):
        try:
            held.append(await anyio.connect_tcp("127.0.0.1", port))
        except OSError:
            break
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        health = await timed(lambda: client.get("/healthz"))
        after = _evicted(await client.get("/metrics"))
    for conn in held:
        await conn.aclose()
    return {"connections": len(held), "healthz_status_ms": health,
            "evicted": int(after - before)}


def _evicted(answer: httpx.Response) -> float:
    for line in answer.text.splitlines():
        if line.startswith('dasscod_listener_cut_off_total{reason="evicted"}'):
            return float(line.split()[-1])
    return 0.0


async def main() -> dict[str, Any]:
    open_files(2 * SILENT + 2 * CONNECTIONS + 256)
    with tempfile.TemporaryDirectory() as folder, mongo_server(Path(folder) / "mongo") as uri:
        child = await anyio.open_process(
            [sys.executable, "-m", "dasscod.devstack.bench_listener", "serve", uri],
            stderr=None)
        try:
            assert child.stdout is not None
            said = b""
            with anyio.fail_after(60):  # its log lines come first (stdout too)
                while not (lines := [n for n in said.split(b"\n")[:-1] if n.isdigit()]):
                    said += await child.stdout.receive()
            port = int(lines[0])
            async with anyio.create_task_group() as tg:
                tg.start_soon(_drain, child.stdout)  # its later log lines must not block it
                token = issue(SECRET, JobClaims("no-such-asset", "load", 1), ttl_s=600)
                progress(f"{CONNECTIONS} tricklers")
                tricklers = await under_attack(port, child.pid, head(token, 100_000), b"x",
                                               probe=True)
                progress(f"{CONNECTIONS} held 250 KB bodies")
                held = await under_attack(port, child.pid,
                                          head(token, 256_000) + b" " * 250_000, None,
                                          probe=False)
                progress(f"{SILENT} silent connections")
                quiet = await silent(port)
                tg.cancel_scope.cancel()
        finally:
            child.terminate()
            with anyio.move_on_after(10):
                await child.wait()
    return {"tricklers": tricklers, "held_bodies": held, "silent": quiet}


async def _drain(stream: ByteReceiveStream) -> None:
    async for _ in stream:
        pass


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        open_files(4 * CONNECTIONS)
        anyio.run(serve, sys.argv[2])
    else:
        print(json.dumps(anyio.run(main)))
