"""`python -m dasscod.devstack.bench_ars`: the ARS sync's numbers (issue #3), one JSON object on
the last line of stdout. Progress goes to stderr.
`BENCH_ARS_OUTAGE_S=3 python -m dasscod.devstack.bench_ars` for a quick run.

Against the in-process ARS simulator (real HTTP) and the test store (SecantusDB, or
$DASSCOD_TEST_MONGO_URI), with the sync supervisor's default `SyncOptions` (what the daemon
runs in production) and the simulator's client settings (quick client retries):

1. **calls per asset**: one original and one derivative (its own file, `parent_guid`) all the
   way to ERDA, then one metadata change pushed: every HTTP call the simulator received, token
   requests apart, with a breakdown by kind of path;
2. **coalescing**: three metadata changes while one push is in flight: how many pushes;
3. **outage recovery**: `BENCH_ARS_ASSETS` (100) assets added right after ARS goes down for
   `BENCH_ARS_OUTAGE_S` (30) seconds: time from ARS coming back to the last of them at
   `erda_sync` YES, the breaker's wait after recovery, duplicate creates and ERROR flags.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from dasscod.ars.health import BreakerState, CircuitBreaker
from dasscod.ars.settings import ArsSettings
from dasscod.devstack.ars import ArsSimulator, RequestRecord, ars_simulator
from dasscod.devstack.ars.app import TOKEN_PATH
from dasscod.devstack.assets import add_asset, running_sync
from dasscod.devstack.mongo import mongo_server
from dasscod.log import configure_logging
from dasscod.model import Flag
from dasscod.pipelines import load_pipelines
from dasscod.store import Stores
from dasscod.supervisors.ars_sync import ArsSync, SyncOptions

OUTAGE_S = float(os.environ.get("BENCH_ARS_OUTAGE_S", "30"))
OUTAGE_ASSETS = int(os.environ.get("BENCH_ARS_ASSETS", "100"))
RECOVERY_TARGET_S = 10.0
#: What the daemon runs, `SyncOptions()`; `BENCH_ARS_OPTIONS` (a JSON object) overrides fields,
#: e.g. '{"breaker_max_cooldown_s": 5}', to try a setting.
OPTIONS = SyncOptions(**json.loads(os.environ.get("BENCH_ARS_OPTIONS", "{}")))
PIPELINE = "PIPEHERB0001"
FLAGS = ("is_in_ars", "has_new_file", "has_open_share", "erda_sync", "update_metadata")
DONE = {"is_in_ars": Flag.YES, "erda_sync": Flag.YES, "has_new_file": Flag.NO,
        "has_open_share": Flag.NO}


def progress(message: str) -> None:
    print(f"[bench-ars] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ helpers


class TimedBreaker(CircuitBreaker):
    """The sync's breaker, remembering when it closed (monotonic clock)."""

    def __init__(self, options: SyncOptions) -> None:
        super().__init__(
            threshold=options.breaker_threshold,
            cooldown_s=options.breaker_cooldown_s,
            max_cooldown_s=options.breaker_max_cooldown_s,
        )
        self.closed_at: list[float] = []

    def success(self) -> None:
        was_closed = self.state is BreakerState.CLOSED
        super().success()
        if not was_closed:
            self.closed_at.append(time.monotonic())


def running(
    settings: ArsSettings, stores: Stores, options: SyncOptions = OPTIONS
) -> contextlib.AbstractAsyncContextManager[ArsSync]:
    """The sync supervisor in the background, woken by the store's writes (as in the daemon)."""
    return running_sync(settings, stores, options, breaker=TimedBreaker(options))


async def add_bench_asset(
    stores: Stores, root: Path, guid: str, data: bytes, *, parent: str | None = None
) -> None:
    """An original (a TIFF) or a derivative (a JPEG) of `data`."""
    name = "derivative.jpg" if parent else "original.tif"
    await add_asset(stores, root, guid, files={name: data}, parent=parent,
                    metadata={"digitiser": "Bench Digitiser",
                              "file_format": "jpg" if parent else "tif"})


async def wait_flags(
    stores: Stores, guids: list[str], wanted: Mapping[str, Flag], timeout_s: float,
    interval_s: float = 0.02,
) -> float:
    """Poll until every asset has the wanted flags; the monotonic time it was first seen."""
    query: dict[str, Any] = {"_id": {"$in": guids}, **{k: str(v) for k, v in wanted.items()}}
    deadline = time.monotonic() + timeout_s
    while True:
        if await stores.track.collection.count_documents(query) == len(guids):
            return time.monotonic()
        if time.monotonic() > deadline:
            tracks = await stores.track.find(guids)
            states = {t.id: [*(str(getattr(t, f)) for f in FLAGS), t.ars_error]
                      for t in tracks if any(getattr(t, k) != v for k, v in wanted.items())}
            raise RuntimeError(f"flags not reached in {timeout_s:.0f} s: {states}")
        await anyio.sleep(interval_s)


def kind(record: RequestRecord) -> str:
    """A request's kind of path (guids and file names left out)."""
    path, method = record.path, record.method
    if path.endswith(TOKEN_PATH):
        return "token"
    if "/v1/assets/status/" in path:
        return "asset_status"
    if path.endswith("/v1/assetmetadata") and method == "POST":
        return "create_asset"
    if "/shares/assets/" in path:
        return "share_" + path.rsplit("/", 1)[-1]  # createShare, synchronize, ...
    if "/assetfiles/" in path:
        return f"file_{method.lower()}"
    if "/v1/assetmetadata/" in path:
        tail = path.split("/v1/assetmetadata/", 1)[1]
        action = tail.split("/", 1)[1] if "/" in tail else "asset"
        return f"{method.lower()}_{action}"  # put_asset = metadata update, ...
    return f"{method.lower()}_other"


def by_kind(records: list[RequestRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[kind(record)] = counts.get(kind(record), 0) + 1
    return dict(sorted(counts.items()))


# ------------------------------------------------------------------------------ phase 1


async def calls_per_asset(sim: ArsSimulator, stores: Stores, root: Path) -> dict[str, Any]:
    parent, child = f"orig-{uuid.uuid4().hex[:10]}", f"deriv-{uuid.uuid4().hex[:10]}"
    await add_bench_asset(stores, root, parent, b"P" * 200_000)
    await add_bench_asset(stores, root, child, b"C" * 50_000, parent=parent)
    sim.requests.clear()
    started = time.monotonic()
    async with running(sim.settings(), stores) as sync:
        progress("calls: an original and its derivative to ERDA")
        await wait_flags(stores, [parent, child], DONE, timeout_s=60)
        to_erda_s = time.monotonic() - started
        progress("calls: one metadata change pushed")
        await stores.metadata.merge(parent, {"funding": "bench"}, updated_by="bench")
        await stores.track.set_fields(parent, {"update_metadata": Flag.YES}, cause="bench")
        await wait_flags(stores, [parent], {"update_metadata": Flag.NO}, timeout_s=30)
        records = list(sim.requests)
        coalescing = await metadata_coalescing(sim, stores, parent, sync)
    tokens = sum(1 for r in records if kind(r) == "token")
    return {
        "ars_calls_per_asset": len(records) - tokens,
        "ars_token_calls": tokens,
        "ars_calls_by_kind": {k: v for k, v in by_kind(records).items() if k != "token"},
        "ars_calls_not_ok": sum(1 for r in records if r.outcome != "ok"),
        "ars_calls_scope": "one original + one derivative to ERDA, plus one metadata push",
        "original_and_derivative_to_erda_s": round(to_erda_s, 2),
        **coalescing,
    }


async def metadata_coalescing(
    sim: ArsSimulator, stores: Stores, guid: str, sync: ArsSync
) -> dict[str, Any]:
    """Three changes, the second and third while the first's push is in flight."""
    progress("coalescing: three metadata changes during one push")
    path = f"/v1/assetmetadata/{guid}"
    before = sim.count(path, "PUT")
    sim.faults.latency_s = 0.3  # every call takes a while: the push is in flight
    try:
        await stores.metadata.merge(guid, {"funding": "change 1"}, updated_by="bench")
        await stores.track.set_fields(guid, {"update_metadata": Flag.YES}, cause="change 1")
        deadline = time.monotonic() + 10
        while sim.count(path, "PUT") == before:
            if time.monotonic() > deadline:
                raise RuntimeError("the first metadata push never started")
            await anyio.sleep(0.005)
        in_flight = sync.working_on("metadata", guid)
        for n in (2, 3):
            await stores.metadata.merge(guid, {"funding": f"change {n}"}, updated_by="bench")
            await stores.track.set_fields(guid, {"update_metadata": Flag.YES},
                                          cause=f"change {n}")
        await wait_flags(stores, [guid], {"update_metadata": Flag.NO}, timeout_s=30)
        await anyio.sleep(1.0)  # a third push, if any, would come now
    finally:
        sim.faults.latency_s = 0.0
    remote = sim.state.assets[guid].get("funding")
    return {
        "metadata_pushes_for_3_changes": sim.count(path, "PUT") - before,
        "metadata_push_in_flight_during_changes": in_flight,
        "metadata_in_ars_is_last_change": remote == "change 3",
    }


# ------------------------------------------------------------------------------ phase 2


async def outage(sim: ArsSimulator, stores: Stores, root: Path) -> dict[str, Any]:
    sim.requests.clear()
    guids = [f"out-{i:03d}-{uuid.uuid4().hex[:8]}" for i in range(OUTAGE_ASSETS)]
    settings = sim.settings()
    async with running(settings, stores) as sync:
        breaker = sync.breaker
        assert isinstance(breaker, TimedBreaker)
        progress(f"outage: ARS down for {OUTAGE_S:g} s, {len(guids)} assets added")
        sim.faults.down_for(OUTAGE_S)
        back = sim.faults.down_until
        for g in guids:
            await add_bench_asset(stores, root, g, f"pixels of {g}".encode() * 100)
        added_s = time.monotonic() - (back - OUTAGE_S)
        progress(f"outage: added in {added_s:.1f} s; waiting for ARS and the sync")
        done = await wait_flags(stores, guids, DONE, timeout_s=OUTAGE_S + 600, interval_s=0.05)
        opened = [c for s, c in breaker.transitions if s is BreakerState.OPEN]
        closes = [t for t in breaker.closed_at if t >= back]
        transitions = [(str(s), c) for s, c in breaker.transitions]
    tracks = await stores.track.find(guids)
    error_flags = sum(
        1 for t in tracks for h in t.history if h.to == Flag.ERROR
    ) + sum(1 for t in tracks for f in FLAGS if getattr(t, f) is Flag.ERROR)
    creates_ok = sum(1 for r in sim.requests if kind(r) == "create_asset" and r.outcome == "ok")
    recovery = done - back
    progress(f"outage: breaker transitions (state, cooldown s): {transitions}")
    return {
        "ars_outage_recovery_s": round(recovery, 2),
        "ars_outage_recovery_target_met": recovery <= RECOVERY_TARGET_S,
        "breaker_max_cooldown_s": max(opened, default=0.0),
        "breaker_probe_after_recovery_s": round(closes[0] - back, 2) if closes else None,
        "breaker_opened": len(opened),
        "outage_s": OUTAGE_S,
        "outage_assets": len(guids),
        "outage_assets_added_s": round(added_s, 2),
        # ARS refuses a second create of a guid; a create that reached ARS beyond one per asset
        # would be a duplicate attempt.
        "assets_created_twice": max(0, creates_ok - len(guids)),
        "error_flags": error_flags,
        "outage_calls_by_kind": by_kind(sim.requests),
        "outage_calls_refused_by_fault": sum(1 for r in sim.requests if r.outcome != "ok"),
    }


# ------------------------------------------------------------------------------ main


async def main() -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dasscod-bench-ars-") as tmp:
        root = Path(tmp)
        with mongo_server(root / "mongo") as uri:
            stores = Stores.connect(uri, f"bench_ars_{uuid.uuid4().hex[:8]}", load_pipelines())
            await stores.ensure_indexes()
            try:
                async with ars_simulator() as sim:
                    calls = await calls_per_asset(sim, stores, root / "files")
                    recovery = await outage(sim, stores, root / "files")
                    client = sim.settings()
            finally:
                await stores.client.drop_database(stores.db.name)
                await stores.close()
    return {
        **calls,
        **recovery,
        "sync_options": OPTIONS.model_dump(),
        "client_retries": {
            "attempts": client.retry_attempts,
            "timeout_s": client.retry_timeout_s,
            "wait_initial_s": client.retry_wait_initial_s,
            "wait_max_s": client.retry_wait_max_s,
        },
        "store": "mongodb" if os.environ.get("DASSCOD_TEST_MONGO_URI") else "secantusdb",
        "run_s": round(time.monotonic() - started, 1),
    }


def run() -> None:
    # The client's per-retry warnings would be hundreds of lines during the outage; the
    # breaker's transitions are reported by the bench itself.
    configure_logging("ERROR", "json")
    results = anyio.run(main)
    print(json.dumps(results))


if __name__ == "__main__":
    run()
