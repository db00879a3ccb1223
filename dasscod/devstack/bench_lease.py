"""Leader lease numbers, one JSON line on stdout (merged into `make bench` as "lease"):

- `startup_s`: `dasscod run` as a process, from its start to READY (its "ready" log line, the
  moment it sends systemd READY=1), with `BENCH_STARTUP_ASSETS` (100 000) finished assets in
  the store; `startup_readyz_s`: to /readyz answering 200;
- `failover_s`: two daemons on one database (default `leader.lease_s`, 15 s) with assets
  mid-pipeline; from SIGKILL of the leader to the first transition the standby writes.
Jobs call back through the readiness proxy, as through a load balancer. Progress to stderr."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from anyio.from_thread import start_blocking_portal
from pymongo import AsyncMongoClient, InsertOne

from dasscod.devstack.failover import ReadyProxy
from dasscod.devstack.mongo import free_port, mongo_server
from dasscod.devstack.stack import LocalStack, deliver, stop_daemon
from dasscod.model import JobStatus, Track
from dasscod.pipeline import new_track_fields
from dasscod.pipelines import load_pipelines
from dasscod.store.codec import to_bson

STARTUP_ASSETS = int(os.environ.get("BENCH_STARTUP_ASSETS", "100000"))


def progress(message: str) -> None:
    print(f"[bench-lease] {message}", file=sys.stderr, flush=True)


async def wait_status(proxy: ReadyProxy, port: int, status: str, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await proxy.ready(port) == status:
            return time.monotonic()
        await anyio.sleep(0.02)
    raise RuntimeError(f"the daemon on port {port} did not say {status!r} in {timeout_s:g} s")


async def fill(uri: str, database: str, n: int) -> None:
    herb = load_pipelines()["PIPEHERB0001"]
    template = Track.model_validate({"_id": "x", "pipeline": herb.name,
                                     "job_list": herb.initial_jobs()})
    for job in template.job_list:
        job.status = JobStatus.DONE
        job.attempt = 1
    base = new_track_fields(template, herb, datetime.now(UTC)).to_document()
    doc = to_bson(base)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    try:
        batch: list[InsertOne[dict[str, Any]]] = []
        for i in range(n):
            batch.append(InsertOne({**doc, "_id": f"start-{i:06d}"}))
            if len(batch) == 2000:
                await client[database]["track"].bulk_write(batch, ordered=False)
                batch = []
        if batch:
            await client[database]["track"].bulk_write(batch, ordered=False)
    finally:
        await client.close()


async def startup(root: Path, uri: str, proxy: ReadyProxy) -> tuple[float, float]:
    """Seconds from the start of `dasscod run` to READY (its "ready" log line, sent to systemd
    as READY=1), and to /readyz answering 200."""
    database = f"startup_{uuid.uuid4().hex[:8]}"
    stack = LocalStack(root / "startup", uri, database=database, port=proxy.backends[0])
    stack.write_config()
    # A first start creates the indexes (as the installed daemon did long ago), then the store
    # fills; the measured start is a restart of a daemon with a full store.
    proc = stack.start_daemon()
    await wait_status(proxy, stack.port, "ready", 120)
    stop_daemon(proc)
    progress(f"startup: inserting {STARTUP_ASSETS} finished assets")
    await fill(uri, database, STARTUP_ASSETS)
    log = stack.root / "restart.log"
    started_at = datetime.now(UTC)
    started = time.monotonic()
    proc = stack.start_daemon(log)
    try:
        answered = await wait_status(proxy, stack.port, "ready", 300)
    finally:
        stop_daemon(proc)
    ready_at = first_event_after(log, "ready", started_at)
    if ready_at is None:
        raise RuntimeError("the restarted daemon never logged ready")
    return (ready_at - started_at).total_seconds(), answered - started


def first_event_after(log: Path, name: str, t: datetime) -> datetime | None:
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            at = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))
            if at > t:
                return at
    return None


async def failover(root: Path, uri: str, proxy: ReadyProxy) -> float:
    database = f"failover_{uuid.uuid4().hex[:8]}"
    stack = LocalStack(root / "failover", uri, database=database,
                       public_url=f"http://127.0.0.1:{proxy.port}",
                       job_env={"DASSCO_TEST_SLEEP_S": "1.0"})  # fmt: skip
    leader_port, standby_port = proxy.backends
    stack.port = leader_port
    stack.write_config()
    for i in range(12):
        deliver(stack.intake, f"failover-{i}-{uuid.uuid4().hex[:6]}")
    leader = stack.start_daemon(stack.root / "leader.log")
    await wait_status(proxy, leader_port, "ready", 120)
    stack.port = standby_port
    stack.write_config()
    standby = stack.start_daemon(stack.root / "standby.log")
    try:
        await wait_status(proxy, standby_port, "standby", 120)
        await anyio.sleep(4)  # jobs under way
        killed_at = datetime.now(UTC)
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            first = first_event_after(stack.root / "standby.log", "transition", killed_at)
            if first is not None:
                return (first - killed_at).total_seconds()
            await anyio.sleep(0.2)
        raise RuntimeError("the standby wrote no transition within 120 s of the kill")
    finally:
        stop_daemon(leader)
        stop_daemon(standby)


async def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dasscod-bench-lease-") as tmp:
        root = Path(tmp)
        with mongo_server(root / "mongo") as uri, start_blocking_portal() as portal:
            proxy = ReadyProxy([free_port(), free_port()])
            future, _ = portal.start_task(proxy.run)
            try:
                progress("failover")
                failover_s = await failover(root, uri, proxy)
                progress("startup")
                startup_s, readyz_s = await startup(root, uri, proxy)
            finally:
                future.cancel()
    return {"failover_s": round(failover_s, 2), "startup_s": round(startup_s, 2),
            "startup_readyz_s": round(readyz_s, 2), "startup_assets": STARTUP_ASSETS}


if __name__ == "__main__":
    print(json.dumps(anyio.run(main)))
