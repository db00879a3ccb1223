"""`make bench`: the daemon's performance numbers, one JSON object on the last line of stdout.

Phases, each against a fresh database on the test store (SecantusDB, or $DASSCOD_TEST_MONGO_URI):
1. raw single-document updates of track documents (`store_updates_per_s`), the yardstick for
2. authenticated job callbacks over HTTP into the daemon's listener (`callbacks_per_s`), sent by
   a separate load-generator process so that it does not share the daemon's CPU, the
   daemon's CPU time per callback (`daemon_cpu_ms_per_callback`, which the machine's load
   changes less than the rate) and the MongoDB commands each costs
   (`mongo_commands_per_callback`);
3. assets through HERB0001 with the direct scheduler and the test module: the hand-off latency
   from one job's finished callback to the next job's submission (from the stored history), and
   the MongoDB commands spent on one asset once the daemon has settled after start-up (PyMongo
   command monitoring, by kind and by caller: `bench_commands.py`), without the timed loops'
   periodic reads that happen to fall in its window (reported beside it);
4. the daemon idle with 10 000 finished assets in the store: CPU, resident memory, and the
   MongoDB commands per second its timed loops cost whatever the number of assets;
5. the demo batch with the real HPC modules, and each module on a full-size sheet
   (`bench_demo.py`);
6. ARS synchronisation (`bench_ars.py`), the Slurm cluster (`bench_cluster.py`), the image
   modules' quality on a varied corpus (`bench_modules.py`, under `modules`) and on the
   independently written generator's sheets (`bench_field_sheets.py`, under `modules_field`),
   `GET /metrics` with 100,000 assets in the store (`bench_metrics.py`), the listener under
   attack (`bench_listener.py`, under `listener`), run as their own processes, their numbers
   merged under their names.
Progress goes to stderr.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import psutil
from pymongo import AsyncMongoClient, InsertOne

from dasscod.devstack.bench_commands import CommandCounter, by_caller, by_kind, by_source
from dasscod.devstack.bench_demo import demo_runs, module_times
from dasscod.devstack.mongo import mongo_server
from dasscod.devstack.stack import LocalStack, deliver
from dasscod.log import configure_logging
from dasscod.model import JobStatus, Track
from dasscod.pipeline import (
    Event,
    JobEvent,
    Pipeline,
    new_track_fields,
    plan,
)
from dasscod.pipelines import BUILTIN_PIPELINES, load_pipelines
from dasscod.settings import Settings
from dasscod.store.codec import to_bson
from dasscod.store.track import TRACK_INDEXES
from dasscod.tokens import JobClaims, issue
from dasscod.wiring import build_daemon

CALLBACK_ASSETS = int(os.environ.get("BENCH_CALLBACK_ASSETS", "400"))
SEQUENTIAL_ASSETS = int(os.environ.get("BENCH_SEQUENTIAL_ASSETS", "10"))
LATENCY_ASSETS = int(os.environ.get("BENCH_LATENCY_ASSETS", "8"))
IDLE_ASSETS = int(os.environ.get("BENCH_IDLE_ASSETS", "10000"))
#: At least `sweep_s` (the longest period of the daemon's timed loops), so that each of them
#: runs in the window and the background commands per second are a fair average.
IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_S", "30"))
#: The daemon has settled after start-up once it sent no command for this long.
SETTLED_QUIET_S = 1.0
CONCURRENCY = 16
BENCH_PIPELINE = "PIPEBENCH"


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ phase 1


async def raw_updates(uri: str, pipelines: Mapping[str, Pipeline], n_docs: int = 1500) -> float:
    """The store's own speed for the work one callback needs: one `update_one` by `_id` on a
    track document of the real shape, in a collection with the track's indexes, setting a
    job's status and time, bumping the version and appending a history entry; two updates
    per document, as started + finished do."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    coll = client["bench_raw"]["track"]
    await coll.drop()
    # The same indexes as the daemon's track collection: the store maintains them on every
    # update, for the yardstick as for the daemon.
    await coll.create_indexes(TRACK_INDEXES)
    pipeline = pipelines["PIPEHERB0001"]
    now = datetime.now().astimezone()
    base = to_bson(
        new_track_fields(
            Track.model_validate(
                {"_id": "x", "pipeline": pipeline.name, "job_list": pipeline.initial_jobs()}
            ),
            pipeline,
            now,
        ).to_document()
    )
    await coll.insert_many([{**base, "_id": f"raw-{i:05d}"} for i in range(n_docs)])
    work = [f"raw-{i:05d}" for i in range(n_docs)] * 2
    entry = {
        "at": now,
        "job": "load",
        "attempt": 1,
        "from": "QUEUED",
        "to": "RUNNING",
        "cause": "bench",
    }

    async def worker(w: int) -> None:
        for guid in work[w::CONCURRENCY]:
            await coll.update_one(
                {"_id": guid},
                {
                    "$set": {"job_list.0.status": "RUNNING", "job_list.0.job_start_time": now},
                    "$inc": {"version": 1},
                    "$push": {"history": entry},
                },
            )

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for w in range(CONCURRENCY):
            tg.start_soon(worker, w)
    elapsed = time.perf_counter() - started
    await client.drop_database("bench_raw")
    await client.close()
    return len(work) / elapsed


# ------------------------------------------------------------------------------ phase 2

#: The load generator: keep-alive HTTP/1.1 over plain asyncio streams, requests prepared in
#: advance, so that on a small machine it takes as little CPU as possible from the daemon and
#: the store it measures. Answers are checked for 200 and `"applied":true`.
LOADGEN = r"""
import asyncio, json, sys, time
from urllib.parse import urlsplit
spec = json.load(sys.stdin)
url = urlsplit(spec["base"])

def request(path, body, token):
    data = json.dumps(body).encode()
    head = (f"POST {url.path}{path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n")
    return head.encode() + data

async def main():
    queue = asyncio.Queue()
    for item in spec["items"]:
        body = {"asset_guid": item["guid"], "job": item["job"], "attempt": 1}
        queue.put_nowait([
            request("/jobs/started", body, item["token"]),
            request("/jobs/finished", {**body, "run_time_s": 0.1}, item["token"]),
        ])
    errors = []
    async def worker():
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        while not queue.empty():
            for req in queue.get_nowait():
                writer.write(req)
                status = (await reader.readline()).split(b" ")[1]
                length = 0
                while (line := await reader.readline()) != b"\r\n":
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                answer = await reader.readexactly(length)
                if status != b"200" or b'"applied":true' not in answer:
                    errors.append((status.decode(), answer[:200].decode()))
        writer.close()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
    elapsed = time.perf_counter() - started
    print(json.dumps({"elapsed": elapsed, "errors": errors[:5], "n_errors": len(errors)}))

asyncio.run(main())
"""


def bench_pipelines(root: Path) -> Path:
    """The built-in pipelines plus a one-job pipeline, so that a finished callback ends the
    asset and the callback phase measures the listener and the store, not job launches."""
    folder = root / "pipelines"
    folder.mkdir(parents=True, exist_ok=True)
    for path in load_pipelines_dir():
        (folder / path.name).write_text(path.read_text())
    (folder / "BENCH.toml").write_text(
        f'name = "{BENCH_PIPELINE}"\n\n[[jobs]]\nname = "load"\npriority = 1\n'
    )
    return folder


def load_pipelines_dir() -> list[Path]:
    return sorted(BUILTIN_PIPELINES.glob("*.toml"))


def bench_settings(stack: LocalStack, pipelines_dir: Path, **timing: float) -> Settings:
    data = stack.settings_data()
    data["pipelines_dir"] = str(pipelines_dir)
    data["timing"].update(timing)
    data["log_level"] = "WARNING"
    return Settings.model_validate(data)


@contextmanager
def _quiet() -> Iterator[None]:
    configure_logging("WARNING", "json")
    yield


async def callbacks(stack: LocalStack, pipelines_dir: Path) -> dict[str, float]:
    """Callbacks per second, the daemon's CPU per callback, and MongoDB commands per callback
    without the timed loops' reads."""
    # The jobs were never really submitted: keep the watcher from declaring them lost. No job
    # becomes ready here: the dispatchers' timed sweeps and housekeeping (seconds apart in
    # the local stack) would find nothing and only blur the commands counted per callback.
    settings = bench_settings(stack, pipelines_dir, watch_s=600.0, sweep_s=600.0,
                              housekeeping_s=15.0)
    settings.intake.enabled = False
    counter = CommandCounter()
    daemon = build_daemon(settings, command_listeners=[counter])
    pipelines = load_pipelines(pipelines_dir)
    guids = [f"cb-{i:05d}-{uuid.uuid4().hex[:6]}" for i in range(CALLBACK_ASSETS)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        await daemon.ready.wait()
        # The watcher's first pass must be over before the jobs below exist: one that saw
        # them would find no such job on the scheduler and declare it lost.
        await _settled(counter)
        progress(f"callbacks: preparing {len(guids)} assets with a submitted job")
        docs = []
        now = datetime.now().astimezone()
        for guid in guids:
            track = Track.model_validate(
                {
                    "_id": guid,
                    "pipeline": BENCH_PIPELINE,
                    "job_list": pipelines[BENCH_PIPELINE].initial_jobs(),
                }
            )
            docs.append(new_track_fields(track, pipelines[BENCH_PIPELINE], now))
        # Claimed and submitted as the dispatcher would have done, without starting processes.
        for track in docs:
            await daemon.stores.track.insert(_submitted(track, pipelines[BENCH_PIPELINE]))
        items = [
            {
                "guid": g,
                "job": "load",
                "token": issue(settings.security.secret(), JobClaims(g, "load", 1), ttl_s=3600),
            }
            for g in guids
        ]
        spec = {"base": settings.listener.callback_base, "concurrency": CONCURRENCY, "items": items}
        progress(f"callbacks: {2 * len(items)} callbacks from a load generator")
        counter.reset()
        # The daemon runs in this process, the load generator and the store in their own: this
        # process's CPU time is the daemon's cost of the callbacks, whatever else loads the
        # machine (which the rate depends on).
        cpu_before = psutil.Process().cpu_times()
        result = await anyio.run_process(
            [sys.executable, "-c", LOADGEN], input=json.dumps(spec).encode(), check=True
        )
        cpu_after = psutil.Process().cpu_times()
        sent = counter.asset_path()
        out = json.loads(result.stdout.decode().strip().splitlines()[-1])
        done = await daemon.stores.track.collection.count_documents(
            {"_id": {"$in": guids}, "jobs_status": "DONE"}
        )
        daemon.stop()
    if out["n_errors"] or done != len(guids):
        raise RuntimeError(f"callback phase failed: {done}/{len(guids)} done, {out}")
    progress(f"callbacks: commands sent: {by_caller(sent)}")
    n = 2 * len(items)
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    return {
        "callbacks_per_s": n / out["elapsed"],
        "daemon_cpu_ms_per_callback": 1000 * cpu / n,
        "mongo_commands_per_callback": len(sent) / n,
    }


def _submitted(track: Track, pipeline: Pipeline) -> Track:
    """The track after the dispatcher claimed `load` and the scheduler took it."""
    now = datetime.now().astimezone()
    step = plan(
        track,
        [JobEvent("load", Event.CLAIM, cluster="local")],
        pipeline=pipeline,
        now=now,
        cause="bench",
    )
    step = plan(
        step.track,
        [JobEvent("load", Event.SUBMITTED, attempt=1, hpc_job_id="1")],
        pipeline=pipeline,
        now=now,
        cause="bench",
    )
    assert step.track.job("load").status is JobStatus.QUEUED
    return step.track


# ------------------------------------------------------------------------------ phase 3


async def pipeline_run(stack: LocalStack, pipelines_dir: Path) -> dict[str, Any]:
    counter = CommandCounter()
    settings = bench_settings(stack, pipelines_dir, watch_s=10.0, housekeeping_s=15.0, sweep_s=30.0)
    settings.intake.settle_s = 0.0
    # Room for every asset's job at once: the latency measured is the hand-off itself, not
    # a wait for a free slot (which the throttle imposes on purpose).
    settings.clusters["local"].max_jobs = max(settings.clusters["local"].max_jobs, LATENCY_ASSETS)
    settings.intake.poll_s = 0.1
    daemon = build_daemon(settings, command_listeners=[counter])
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        await daemon.ready.wait()
        # The bench's own polling goes through its own client, so that it is not counted.
        watcher: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo_uri, tz_aware=True)
        coll = watcher[stack.database]["track"]
        # One asset alone: every command the daemon sends while it goes through HERB0001,
        # once the start-up passes of every supervisor are over (they are no asset's cost).
        await _settled(counter)
        single = f"one-{uuid.uuid4().hex[:8]}"
        progress("pipeline: one asset alone, counting MongoDB commands")
        counter.reset()
        deliver(stack.intake, single)
        await _wait_done(coll, [single], 120)
        asset_path = counter.asset_path()
        periodic = counter.periodic()
        # Hand-offs one asset at a time: the orchestration's own latency. The job processes
        # run on this machine too, so with many at once they compete with the daemon and the
        # store for the CPU; that case is reported separately.
        progress(f"pipeline: {SEQUENTIAL_ASSETS} assets one after another for hand-off latency")
        sequential: list[float] = []
        for i in range(SEQUENTIAL_ASSETS):
            guid = f"seq-{i}-{uuid.uuid4().hex[:6]}"
            deliver(stack.intake, guid)
            await _wait_done(coll, [guid], 120)
            sequential.extend(_handoffs(await coll.find_one({"_id": guid}) or {}))
        guids = [f"par-{i}-{uuid.uuid4().hex[:6]}" for i in range(LATENCY_ASSETS)]
        progress(f"pipeline: {len(guids)} assets at once through HERB0001")
        counter.reset()
        started = time.monotonic()
        for guid in guids:
            deliver(stack.intake, guid)
        await _wait_done(coll, guids, 300)
        parallel_wall = time.monotonic() - started
        # Assets at once race for the same dispatchers and slots: a lost version race would
        # cost a re-read and a second write, which this shows.
        parallel_per_asset = len(counter.asset_path()) / len(guids)
        parallel: list[float] = []
        async for doc in coll.find({"_id": {"$in": guids}}):
            parallel.extend(_handoffs(doc))
        await watcher.close()
        daemon.stop()
    progress(f"pipeline: commands for one asset: {by_caller(asset_path)}")
    return {
        "mongo_commands_per_asset": len(asset_path),
        "mongo_commands_by_kind": by_kind(asset_path),
        "mongo_commands_by_caller": by_caller(asset_path),
        # Timed loops' reads that happened to fall in the asset's window: their cost per
        # second is `mongo_background_commands_per_s` (idle phase).
        "mongo_periodic_commands_during_asset": by_source(periodic),
        "dispatch_latency_ms_p50": _percentile(sequential, 50),
        "dispatch_latency_ms_p99": _percentile(sequential, 99),
        "dispatch_handoffs_measured": len(sequential),
        f"dispatch_latency_ms_p50_{LATENCY_ASSETS}_at_once": _percentile(parallel, 50),
        f"dispatch_latency_ms_p99_{LATENCY_ASSETS}_at_once": _percentile(parallel, 99),
        f"wall_s_{LATENCY_ASSETS}_assets_at_once": round(parallel_wall, 2),
        f"mongo_commands_per_asset_{LATENCY_ASSETS}_at_once": round(parallel_per_asset, 2),
    }


def _percentile(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))
    return round(ordered[index], 1)


def _handoffs(doc: dict[str, Any]) -> list[float]:
    """Milliseconds from each job's DONE to the next job's submission (the scheduler took it)."""
    done: dict[str, datetime] = {}
    submitted: dict[str, datetime] = {}
    for entry in doc["history"]:
        if entry["job"] is None:
            continue
        if entry["to"] == "DONE":
            done[entry["job"]] = entry["at"]
        if entry["from"] == "STARTING" and entry["to"] in ("QUEUED", "RUNNING"):
            submitted.setdefault(entry["job"], entry["at"])
    names = [j["name"] for j in sorted(doc["job_list"], key=lambda j: j["priority"])]
    return [
        (submitted[b] - done[a]).total_seconds() * 1000
        for a, b in itertools.pairwise(names)
        if a in done and b in submitted
    ]


async def _settled(counter: CommandCounter, timeout_s: float = 30.0) -> None:
    """Wait until the daemon has sent no command for `SETTLED_QUIET_S`: the first pass of
    every supervisor (each dispatcher's start-up sweep, housekeeping, retention, the watchers,
    the metrics snapshot) is over. Only the lease renewals, every `leader.lease_s / 4`, and
    the loops' next passes, `timing.*_s` apart, come after."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        last = counter.last_at
        quiet = time.monotonic() - last if last is not None else 0.0
        if quiet >= SETTLED_QUIET_S:
            return
        await anyio.sleep(SETTLED_QUIET_S - quiet)
    raise RuntimeError(f"the daemon did not settle within {timeout_s:.0f} s of starting")


async def _wait_done(coll: Any, guids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = await coll.count_documents({"_id": {"$in": guids}, "jobs_status": "DONE"})
        if n == len(guids):
            return
        await anyio.sleep(0.2)
    raise RuntimeError(f"assets not done within {timeout_s:.0f} s")


# ------------------------------------------------------------------------------ phase 4


async def idle(stack: LocalStack, pipelines_dir: Path) -> dict[str, Any]:
    pipelines = load_pipelines(pipelines_dir)
    herb = pipelines["PIPEHERB0001"]
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo_uri, tz_aware=True)
    coll = client[stack.database]["track"]
    progress(f"idle: inserting {IDLE_ASSETS} finished assets")
    now = datetime.now().astimezone()
    template = Track.model_validate(
        {"_id": "x", "pipeline": herb.name, "job_list": herb.initial_jobs()}
    )
    for job in template.job_list:
        job.status = JobStatus.DONE
        job.attempt = 1
    template = new_track_fields(template, herb, now)
    base = to_bson(template.to_document())
    batch: list[InsertOne[dict[str, Any]]] = []
    for i in range(IDLE_ASSETS):
        batch.append(InsertOne({**base, "_id": f"idle-{i:06d}"}))
        if len(batch) == 1000:
            await coll.bulk_write(batch, ordered=False)
            batch = []
    if batch:
        await coll.bulk_write(batch, ordered=False)
    await client.close()
    settings = bench_settings(stack, pipelines_dir, watch_s=10.0, housekeeping_s=15.0, sweep_s=30.0)
    counter = CommandCounter()
    daemon = build_daemon(settings, command_listeners=[counter])
    me = psutil.Process()
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        await daemon.ready.wait()
        await _settled(counter)  # start-up work is over: measure the steady state
        progress(f"idle: measuring for {IDLE_SECONDS:g} s")
        counter.reset()
        cpu_before = me.cpu_times()
        wall_before = time.monotonic()
        await anyio.sleep(IDLE_SECONDS)
        cpu_after = me.cpu_times()
        wall = time.monotonic() - wall_before
        rss = me.memory_info().rss
        background = list(counter.commands)
        daemon.stop()
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    return {
        "idle_cpu_percent": round(100 * cpu / wall, 2),
        "rss_mb": round(rss / 2**20, 1),
        # The fixed cost of the timed loops, whatever the number of assets: every command of
        # the idle daemon, by the loop that sent it, over `idle_window_s`.
        "mongo_background_commands_per_s": round(len(background) / wall, 2),
        "mongo_background_by_source": by_source(background),
        "idle_window_s": round(wall, 1),
    }


# ------------------------------------------------------------------------------ main


async def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dasscod-bench-") as tmp, _quiet():
        root = Path(tmp)
        with mongo_server(root / "mongo") as uri:
            pipelines_dir = bench_pipelines(root)
            progress("raw store updates")
            store_rate = await raw_updates(uri, load_pipelines(pipelines_dir))
            stack = LocalStack(root / "cb", uri, database="bench_callbacks")
            stack.write_config()
            callback = await callbacks(stack, pipelines_dir)
            stack = LocalStack(root / "pipe", uri, database="bench_pipeline")
            stack.write_config()
            pipeline = await pipeline_run(stack, pipelines_dir)
            stack = LocalStack(root / "idle", uri, database="bench_idle")
            stack.write_config()
            idle_numbers = await idle(stack, pipelines_dir)
        demo_numbers = await demo_runs(root)
    modules = module_times()
    return {
        "store_updates_per_s": round(store_rate, 1),
        "callbacks_per_s": round(callback["callbacks_per_s"], 1),
        "callback_ratio": round(callback["callbacks_per_s"] / store_rate, 3),
        "daemon_cpu_ms_per_callback": round(callback["daemon_cpu_ms_per_callback"], 2),
        "mongo_commands_per_callback": round(callback["mongo_commands_per_callback"], 3),
        **pipeline,
        **idle_numbers,
        **demo_numbers,
        **modules,
        "store": "mongodb" if os.environ.get("DASSCOD_TEST_MONGO_URI") else "secantusdb",
        "concurrency": CONCURRENCY,
    }


#: The other benchmarks, each its own process with its own JSON line, merged into ours under
#: its name. `BENCH_ONLY_CORE=1` skips them (the cluster one takes minutes).
PARTS = {
    "dasscod.devstack.bench_ars": "bench_ars",
    "dasscod.devstack.bench_cluster": "bench_cluster",
    "dasscod.devstack.bench_lease": "lease",
    "dasscod.devstack.bench_listener": "listener",
    "dasscod.devstack.bench_modules": "modules",
    "dasscod.devstack.bench_field_sheets": "modules_field",
    "dasscod.devstack.bench_metrics": "bench_metrics",
}


def run() -> None:
    results = anyio.run(main)
    if not os.environ.get("BENCH_ONLY_CORE"):
        for module, name in PARTS.items():
            progress(f"running {module}")
            done = subprocess.run(
                [sys.executable, "-m", module], capture_output=True, text=True, check=False
            )
            lines = done.stdout.strip().splitlines()
            try:
                part = json.loads(lines[-1]) if lines else {}
            except ValueError:
                part = {}
            if done.returncode != 0 or not isinstance(part, dict):
                part = {"failed": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
            results[name] = part
    print(json.dumps(results))


if __name__ == "__main__":
    run()
