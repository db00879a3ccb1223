"""`make demo`: the embedded stack on one machine, a batch of synthetic specimens through HERB0001.

Starts the test store (SecantusDB) and `dasscod run` with the direct scheduler, draws
`DEMO_ASSETS` herbarium sheets (default 10: a multi-object specimen pair and a colour target
among them), delivers them to the intake folder, shows progress while they move through the
pipeline, and ends with a table per asset. The jobs run the real modules from `hpc/` (barcode
with zxing-cpp, OCR with tesseract, derivatives with Pillow); only `upload` is a stand-in until
the ARS synchronisation exists (see `dasscod/devstack/hpc_standins.py`).

Exits 0 only if every asset reached its expected end state; leaves no process running.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from dasscod.devstack.mongo import mongo_server
from dasscod.devstack.stack import LocalStack, deliver, stop_daemon

ACTIVE = ("STARTING", "QUEUED", "RUNNING")
TIMEOUT_S = float(os.environ.get("DEMO_TIMEOUT_S", "600"))
STANDINS = "dasscod.devstack.hpc_standins"


@dataclass
class Planned:
    """One synthetic asset and what the pipeline must make of it."""

    guid: str
    kind: str
    payloads: list[str]
    label_words: list[str]

    @property
    def expected_type(self) -> str:
        return {"target": "DEVICE_TARGET", "mos_label": "LABEL"}.get(self.kind, "SPECIMEN")

    @property
    def expected_barcodes(self) -> list[str]:
        return [p for p in self.payloads if p.startswith("NHMD-")]


def say(message: str) -> None:
    print(message, flush=True)


def kinds(n: int) -> list[tuple[str, int]]:
    """(kind, seed) per asset: a MOS pair (same seed: same disposable id), a colour target,
    then ordinary specimens and a sheet with two specimens."""
    plan = [("mos_specimen", 7), ("mos_label", 7), ("target", 3)]
    plan += [("mso" if i % 4 == 3 else "specimen", 100 + i) for i in range(max(0, n - 3))]
    return plan[:n]


def draw_batch(folder: Path, n: int, size: tuple[int, int]) -> list[tuple[Planned, Path]]:
    from dassco_hpc.synthetic import write  # needs the hpc `modules` extra (Pillow, zxing-cpp)

    batch = []
    for i, (kind, seed) in enumerate(kinds(n)):
        guid = f"demo-{i:02d}-{kind.replace('_', '-')}-{uuid.uuid4().hex[:4]}"
        path = folder / f"{guid}.tif"
        sheet = write(path, kind, size, seed)
        words = [w for line in sheet.label_lines for w in line.split()]
        batch.append((Planned(guid, kind, sheet.payloads, words), path))
    return batch


def main() -> int:
    n_assets = int(os.environ.get("DEMO_ASSETS", "10"))
    width, height = (int(v) for v in os.environ.get("DEMO_SIZE", "1200x1800").split("x"))
    started = time.monotonic()
    keep = os.environ.get("DEMO_KEEP")  # a folder to keep the stack's files in, for reading
    with tempfile.TemporaryDirectory(prefix="dasscod-demo-") as tmp:
        root = Path(keep) if keep else Path(tmp)
        with mongo_server(root / "mongo") as uri:
            stack = LocalStack(root / "stack", uri, database=f"demo_{uuid.uuid4().hex[:8]}",
                               hpc_modules=STANDINS)
            stack.write_config()
            say(f"stack in {root}; daemon log: {stack.root / 'daemon.log'}")
            drawn = root / "drawn"
            drawn.mkdir(parents=True, exist_ok=True)
            batch = draw_batch(drawn, n_assets, (width, height))
            say(f"drew {len(batch)} synthetic sheets ({width}x{height})")
            proc = stack.start_daemon()
            try:
                for planned, path in batch:
                    deliver(stack.intake, planned.guid, files={path.name: path})
                say(f"delivered {len(batch)} assets to {stack.intake}")
                result = watch(stack, [p for p, _ in batch], proc.poll)
            finally:
                status = stop_daemon(proc)
    problems = [*result.problems]
    if status != 0:
        problems.append(f"daemon exit status {status}")
    table(result)
    say(f"wall time {time.monotonic() - started:.1f} s")
    for problem in problems:
        say(f"PROBLEM: {problem}")
    say("all assets reached their expected end state" if not problems else "demo FAILED")
    return 0 if not problems else 1


@dataclass
class Outcome:
    planned: list[Planned]
    tracks: dict[str, dict[str, Any]]
    metadata: dict[str, dict[str, Any]]
    derivatives: dict[str, int]
    mos: dict[str, dict[str, Any]]
    problems: list[str]


def watch(stack: LocalStack, planned: list[Planned], exited: Callable[[], int | None]) -> Outcome:
    """Print a progress line whenever the counts change, until every asset has settled."""
    client: MongoClient[dict[str, Any]] = MongoClient(stack.mongo_uri, tz_aware=True)
    db = client[stack.database]
    guids = [p.guid for p in planned]
    deadline = time.monotonic() + TIMEOUT_S
    last = ""
    docs: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        while True:
            docs = list(db["track"].find({"_id": {"$in": guids}}))
            settled = [d for d in docs if d["jobs_status"] in ("DONE", "ERROR", "FAILED")]
            running = sum(j["status"] in ACTIVE for d in docs for j in d["job_list"])
            jobs_done = sum(j["status"] == "DONE" for d in docs for j in d["job_list"])
            line = (f"taken {len(docs)}/{len(guids)}  jobs running {running}  "
                    f"jobs done {jobs_done}  assets settled {len(settled)}")
            if line != last:
                say(line)
                last = line
            if len(settled) == len(guids):
                break
            if exited() is not None:
                problems.append("the daemon exited early; see its log")
                break
            if time.monotonic() > deadline:
                problems.append(f"not every asset settled within {TIMEOUT_S:.0f} s")
                break
            time.sleep(0.5)
        outcome = Outcome(
            planned,
            {d["_id"]: d for d in docs},
            {m["_id"]: m for m in db["metadata"].find({"_id": {"$in": guids}})},
            {g: db["track"].count_documents({"parent_guid": g}) for g in guids},
            {m["_id"]: m for m in db["mos"].find({"_id": {"$in": guids}})},
            problems,
        )
    finally:
        client.close()
    outcome.problems.extend(check(outcome))
    return outcome


def check(outcome: Outcome) -> list[str]:
    """Every asset's expected end state, from what was drawn on it."""
    problems = []
    for p in outcome.planned:
        track = outcome.tracks.get(p.guid)
        meta = outcome.metadata.get(p.guid, {})
        if track is None:
            problems.append(f"{p.guid}: never taken by intake")
            continue
        if track["jobs_status"] != "DONE":
            problems.append(f"{p.guid}: ended {track['jobs_status']}")
        if track["asset_type"] != p.expected_type:
            problems.append(f"{p.guid}: type {track['asset_type']}, expected {p.expected_type}")
        missing = set(p.expected_barcodes) - set(meta.get("barcode", []))
        if missing:
            problems.append(f"{p.guid}: barcodes {sorted(missing)} not read")
        if p.kind in ("specimen", "mso") and outcome.derivatives.get(p.guid, 0) == 0:
            problems.append(f"{p.guid}: no derivative registered")
    pair = [p.guid for p in outcome.planned if p.kind.startswith("mos_")]
    if len(pair) == 2:
        for guid, other in (pair, pair[::-1]):
            if other not in outcome.mos.get(guid, {}).get("label_connections", []):
                problems.append(f"{guid}: not linked to its MOS partner {other}")
    return problems


def table(outcome: Outcome) -> None:
    say("")
    say(f"{'asset':<30}{'type':<15}{'barcodes':<28}{'OCR (first words)':<30}"
        f"{'deriv.':>7}  {'ARS':<10}{'status':<8}")
    for p in outcome.planned:
        track = outcome.tracks.get(p.guid, {})
        meta = outcome.metadata.get(p.guid, {})
        barcodes = ",".join(meta.get("barcode", [])) or "-"
        ocr = " ".join(str(meta.get("ocr_text") or "").split()[:4]) or "-"
        say(f"{p.guid:<30}{track.get('asset_type', '?'):<15}{barcodes[:27]:<28}{ocr[:29]:<30}"
            f"{outcome.derivatives.get(p.guid, 0):>7}  {track.get('is_in_ars', '?'):<10}"
            f"{track.get('jobs_status', '?'):<8}")
    say("(ARS: the daemon does not synchronise with ARS yet, so every asset shows NO)")


if __name__ == "__main__":
    sys.exit(main())
