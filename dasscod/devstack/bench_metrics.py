"""`metrics_scrape_ms`: `GET /metrics` with 100,000 assets in the store.

The scrape renders what the daemon keeps in memory; the store is read by the background
snapshot, whose time is reported too (`metrics_snapshot_ms`), as is the number of MongoDB
commands one scrape sends (`metrics_scrape_mongo_commands`, which must be 0). The assets are
mostly finished (as in production), with a few hundred unfinished ones in each state.
Prints one JSON object.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
from pymongo import AsyncMongoClient, InsertOne
from pymongo.monitoring import CommandListener, CommandStartedEvent

from dasscod import metrics
from dasscod.devstack.mongo import mongo_server
from dasscod.listener.observe import metrics_app
from dasscod.log import configure_logging
from dasscod.model import JobStatus, Track
from dasscod.pipeline import Pipeline, new_track_fields
from dasscod.pipelines import load_pipelines
from dasscod.store import Stores
from dasscod.store.codec import to_bson
from dasscod.store.stats import take_snapshot

ASSETS = 100_000
#: Unfinished assets by the status their first job has (the rest are DONE).
UNFINISHED = {JobStatus.WAITING: 400, JobStatus.RUNNING: 300, JobStatus.RETRY: 100,
              JobStatus.ERROR: 200}
SCRAPES = 30


class Counting(CommandListener):
    def __init__(self) -> None:
        self.commands = 0

    def started(self, event: CommandStartedEvent) -> None:
        self.commands += 1

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


def progress(text: str) -> None:
    print(f"bench_metrics: {text}", file=sys.stderr, flush=True)


def document(herb: Pipeline, status: JobStatus, now: datetime) -> dict[str, Any]:
    track = Track.model_validate({"_id": "x", "pipeline": herb.name,
                                  "job_list": herb.initial_jobs()})
    for i, job in enumerate(track.job_list):
        if status is JobStatus.DONE or i == 0:
            job.status = status
            job.attempt = 1
            job.cluster = "local"
    doc: dict[str, Any] = to_bson(new_track_fields(track, herb, now).to_document())
    return doc


async def fill(uri: str, database: str) -> None:
    herb = load_pipelines()["PIPEHERB0001"]
    now = datetime.now().astimezone()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    coll = client[database]["track"]
    statuses = [s for s, n in UNFINISHED.items() for _ in range(n)]
    statuses += [JobStatus.DONE] * (ASSETS - len(statuses))
    templates = {s: document(herb, s, now) for s in set(statuses)}
    batch: list[InsertOne[dict[str, Any]]] = []
    for i, status in enumerate(statuses):
        batch.append(InsertOne({**templates[status], "_id": f"m-{i:06d}"}))
        if len(batch) == 2000:
            await coll.bulk_write(batch, ordered=False)
            batch = []
            if i % 20_000 < 2000:
                progress(f"{i + 1} assets inserted")
    if batch:
        await coll.bulk_write(batch, ordered=False)
    await client.close()


async def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dasscod-bench-metrics-") as tmp, \
            mongo_server(Path(tmp) / "mongo") as uri:
        counting = Counting()
        stores = Stores.connect(uri, "bench_metrics", load_pipelines(), listeners=[counting],
                                operation_timeout_s=900)
        await stores.ensure_indexes()
        progress(f"inserting {ASSETS} assets")
        await fill(uri, "bench_metrics")
        collector = metrics.DaemonCollector(clusters=lambda: {"local": True},
                                            breaker_open=lambda: False, leader=lambda: True)
        progress("first snapshot (with the finished assets)")
        started = time.perf_counter()
        collector.snapshot = await take_snapshot(stores.track.collection)
        full_s = time.perf_counter() - started
        snapshot_times = []
        for _ in range(3):
            started = time.perf_counter()
            collector.snapshot = await take_snapshot(stores.track.collection,
                                                     collector.snapshot)
            snapshot_times.append(time.perf_counter() - started)
        metrics.REGISTRY.register(collector)
        before = counting.commands
        times = []
        size = 0
        transport = httpx.ASGITransport(app=metrics_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for _ in range(SCRAPES):
                started = time.perf_counter()
                answer = await client.get("/metrics")
                times.append(time.perf_counter() - started)
                size = len(answer.content)
        scrape_commands = counting.commands - before
        metrics.REGISTRY.unregister(collector)
        done = collector.snapshot.assets.get(("PIPEHERB0001", "DONE"), 0)
        await stores.close()
    return {
        "metrics_scrape_ms": round(statistics.median(times) * 1000, 2),
        "metrics_scrape_ms_max": round(max(times) * 1000, 2),
        "metrics_scrape_mongo_commands": scrape_commands,
        "metrics_scrape_bytes": size,
        "metrics_snapshot_ms": round(statistics.median(snapshot_times) * 1000, 1),
        "metrics_snapshot_with_finished_ms": round(full_s * 1000, 1),
        "assets": ASSETS,
        "assets_counted_done": done,
    }


def run() -> None:
    configure_logging("WARNING", "json")
    print(json.dumps(anyio.run(main)))


if __name__ == "__main__":
    run()
