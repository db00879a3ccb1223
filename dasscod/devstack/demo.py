"""`make demo`: the embedded stack on one machine, a batch of synthetic specimens through HERB0001.

Starts the test store (SecantusDB), the ARS simulator as a process of its own
(`python -m dasscod.devstack.ars`) and `dasscod run` with the direct scheduler and `[ars]`
pointing at the simulator; draws `DEMO_ASSETS` herbarium sheets (default 10: a multi-object
specimen pair and a colour target among them), delivers them to the intake folder, shows
progress while they move through ARS and the pipeline, and ends with a table per asset. The
daemon puts each asset into ARS and ERDA before `load` may run; the jobs run the real modules
from `hpc/` (barcode with zxing-cpp, OCR with tesseract, derivatives with Pillow, `upload`).

ARS column: ERDA = in ARS with its files archived in ERDA and the metadata pushed; ARS = in
ARS, files not (yet) in ERDA; otherwise the `is_in_ars` flag. The originals are checked in
ARS itself (status, files, barcodes), not only in the daemon's store. Derivatives are created
in ARS as assets linked to their parent, but their files are not uploaded: the daemon cannot
read a derivative's file (see `hpc/dassco_hpc/modules/upload.py`); the summary under the table
says so.

Exits 0 only if every asset reached its expected end state; leaves no process running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import select
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from dasscod.devstack.mongo import mongo_server
from dasscod.devstack.stack import REPO_ROOT, LocalStack, deliver, stop_daemon

ACTIVE = ("STARTING", "QUEUED", "RUNNING")
TIMEOUT_S = float(os.environ.get("DEMO_TIMEOUT_S", "600"))
#: Seconds the simulated ERDA takes to archive an asset's files.
ERDA_DELAY_S = float(os.environ.get("DEMO_ERDA_DELAY_S", "0.2"))
#: After the originals have settled, how long derivatives may take to settle in ARS.
DERIVATIVE_GRACE_S = 30.0
#: No stand-ins: every job runs the real module from `hpc/`.
REAL_MODULES = ""
ARS_CLIENT_ID = "dasscod"
ARS_FLAGS = ("is_in_ars", "has_new_file", "erda_sync", "update_metadata")


@dataclass
class Planned:
    """One synthetic asset and what the pipeline must make of it."""

    guid: str
    kind: str
    payloads: list[str]
    label_words: list[str]

    @property
    def expected_type(self) -> str:
        if self.kind in ("target", "colour_checker"):
            return "DEVICE_TARGET"
        return "LABEL" if self.kind == "mos_label" else "SPECIMEN"

    @property
    def expected_barcodes(self) -> list[str]:
        return [p for p in self.payloads if p.startswith("NHMD-")]


def say(message: str) -> None:
    print(message, flush=True)


def kinds(n: int) -> list[tuple[str, int]]:
    """(kind, seed) per asset: a MOS pair (same seed: same disposable id), a colour target
    with its printed code and one without, then specimens (each label placed, sized, set in
    a font, rotated and worded differently) and a sheet with two specimens."""
    plan = [("mos_specimen", 7), ("mos_label", 7), ("target", 3), ("colour_checker", 4)]
    plan += [("mso" if i % 4 == 3 else "specimen", 100 + i) for i in range(max(0, n - 4))]
    return plan[:n]


def draw_batch(folder: Path, n: int, size: tuple[int, int]) -> list[tuple[Planned, Path]]:
    from dassco_hpc.synthetic import varied, write  # needs the hpc `modules` extra

    batch = []
    for i, (kind, seed) in enumerate(kinds(n)):
        guid = f"demo-{i:02d}-{kind.replace('_', '-')}-{uuid.uuid4().hex[:4]}"
        path = folder / f"{guid}.tif"
        # Varied labels; every specimen keeps its code, so that the table shows what was read.
        variation = replace(varied(seed), code=True) if kind in ("specimen", "mso") else None
        sheet = write(path, kind, size, seed, variation=variation)
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
        with mongo_server(root / "mongo") as uri, ars_simulator_process(root / "ars") as ars:
            stack = LocalStack(root / "stack", uri, database=f"demo_{uuid.uuid4().hex[:8]}",
                               hpc_modules=REAL_MODULES, ars=ars)
            stack.write_config()
            say(f"stack in {root}; daemon log: {stack.root / 'daemon.log'}")
            say(f"ARS simulator at {ars['base_url']} (ERDA delay {ERDA_DELAY_S} s)")
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
            result.problems.extend(check_in_ars(ars, result))
    problems = [*result.problems]
    if status != 0:
        problems.append(f"daemon exit status {status}")
    table(result)
    say(f"wall time {time.monotonic() - started:.1f} s")
    for problem in problems:
        say(f"PROBLEM: {problem}")
    say("all assets reached their expected end state" if not problems else "demo FAILED")
    return 0 if not problems else 1


@contextlib.contextmanager
def ars_simulator_process(folder: Path) -> Iterator[dict[str, Any]]:
    """The simulator as a child process; yields the daemon's `[ars]` table for it. The client
    secret is fresh per run, handed to the simulator in its environment and to the daemon in a
    file (never in the TOML)."""
    folder.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(24)
    secret_file = folder / "client-secret"
    secret_file.touch(mode=0o600)
    secret_file.write_text(secret, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "ARS_SIMULATOR_CLIENT_SECRET": secret}
    with (folder / "simulator.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dasscod.devstack.ars", "--port", "0",
             "--client-id", ARS_CLIENT_ID, "--erda-delay-s", str(ERDA_DELAY_S)],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=folder,
        )
    try:
        urls = json.loads(_ready_line(proc, timeout_s=30.0).removeprefix("ready "))
        yield {
            **urls,
            "allow_http": True,  # the simulator serves plain http on 127.0.0.1
            "client_id": ARS_CLIENT_ID,
            "client_secret_file": str(secret_file),
            "timeout_s": 10.0,
            "retry_wait_initial_s": 0.1,
            "retry_wait_max_s": 1.0,
            "retry_wait_jitter_s": 0.1,
        }
    finally:
        stop_daemon(proc)  # SIGTERM, wait, SIGKILL after a timeout: any child process
        if proc.stdout is not None:
            proc.stdout.close()


def _ready_line(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline().decode() if readable else ""
    if not line.startswith("ready "):
        raise RuntimeError(f"the ARS simulator did not start (got {line!r}); see its log")
    return line.strip()


@dataclass
class Outcome:
    planned: list[Planned]
    tracks: dict[str, dict[str, Any]]
    metadata: dict[str, dict[str, Any]]
    derivatives: dict[str, int]
    mos: dict[str, dict[str, Any]]
    problems: list[str]
    #: The derivatives' tracks, by guid.
    children: dict[str, dict[str, Any]] = field(default_factory=dict)


def ars_state(track: dict[str, Any]) -> str:
    """What the table's ARS column shows (see the module docstring)."""
    flags = [str(track.get(f, "NO")) for f in ARS_FLAGS]
    if any(f in ("ERROR", "CRITICAL_ERROR") for f in flags):
        return "ERROR"
    if track.get("is_in_ars") != "YES":
        return str(track.get("is_in_ars", "?"))
    if track.get("erda_sync") == "YES" and track.get("update_metadata") == "NO":
        return "ERDA"
    return "ARS"


def ars_busy(track: dict[str, Any]) -> bool:
    """Is the daemon still moving this asset in ARS (a flag it will change without a job)?"""
    return (
        any(track.get(f) in ("AWAIT", "UPLOADING") for f in ARS_FLAGS)
        or track.get("has_new_file") == "YES"
        or track.get("update_metadata") == "YES"
    )


def watch(stack: LocalStack, planned: list[Planned], exited: Callable[[], int | None]) -> Outcome:
    """Print a progress line whenever the counts change, until every asset has settled."""
    client: MongoClient[dict[str, Any]] = MongoClient(stack.mongo_uri, tz_aware=True)
    db = client[stack.database]
    guids = [p.guid for p in planned]
    deadline = time.monotonic() + TIMEOUT_S
    grace: float | None = None
    last = ""
    docs: list[dict[str, Any]] = []
    children: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        while True:
            docs = list(db["track"].find({"_id": {"$in": guids}}))
            children = list(db["track"].find({"parent_guid": {"$in": guids}}))
            settled = [d for d in docs if d["jobs_status"] in ("DONE", "ERROR", "FAILED")
                       and not ars_busy(d)]
            running = sum(j["status"] in ACTIVE for d in docs for j in d["job_list"])
            jobs_done = sum(j["status"] == "DONE" for d in docs for j in d["job_list"])
            in_erda = sum(ars_state(d) == "ERDA" for d in docs)
            line = (f"taken {len(docs)}/{len(guids)}  in ERDA {in_erda}  jobs running {running}  "
                    f"jobs done {jobs_done}  assets settled {len(settled)}")
            if line != last:
                say(line)
                last = line
            if len(settled) == len(guids):
                grace = grace or time.monotonic() + DERIVATIVE_GRACE_S
                if not any(ars_busy(c) for c in children):
                    break
                if time.monotonic() > grace:
                    problems.append(f"derivatives still moving in ARS {DERIVATIVE_GRACE_S:.0f} s "
                                    "after their parents settled")
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
            {c["_id"]: c for c in children},
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
        tags = meta.get("tags") or {}
        if p.kind in ("specimen", "mso"):
            read = set(str(tags.get("ocr") or "").split())
            found = sum(w in read for w in p.label_words)
            if found < 0.8 * len(p.label_words):
                problems.append(f"{p.guid}: OCR read {found} of the label's "
                                f"{len(p.label_words)} words ({tags.get('ocr_reason', '')})")
        if p.expected_type == "DEVICE_TARGET" and not tags.get("device_target"):
            problems.append(f"{p.guid}: not marked as a device target in its metadata tags")
        if ars_state(track) != "ERDA":
            problems.append(f"{p.guid}: ARS {ars_state(track)}, expected ERDA"
                            + (f" ({track['ars_error']})" if track.get("ars_error") else ""))
    for guid, child in outcome.children.items():
        # A derivative is made on the cluster, handed to the daemon by the upload job, created
        # in ARS under its parent and archived in ERDA like an original.
        if ars_state(child) != "ERDA" or not all(f.get("ars_link") for f in child["file_list"]):
            problems.append(f"derivative {guid}: ARS {ars_state(child)}, expected ERDA with "
                            "its file" + (f" ({child['ars_error']})"
                                          if child.get("ars_error") else ""))
    pair = [p.guid for p in outcome.planned if p.kind.startswith("mos_")]
    if len(pair) == 2:
        for guid, other in (pair, pair[::-1]):
            if other not in outcome.mos.get(guid, {}).get("label_connections", []):
                problems.append(f"{guid}: not linked to its MOS partner {other}")
    return problems


def table(outcome: Outcome) -> None:
    say("")
    say(f"{'asset':<30}{'type':<15}{'barcodes':<28}{'OCR (first words) / target':<38}"
        f"{'conf':>5} {'words':>5}{'deriv.':>7}  {'ARS':<10}{'status':<8}")
    for p in outcome.planned:
        track = outcome.tracks.get(p.guid, {})
        meta = outcome.metadata.get(p.guid, {})
        tags = meta.get("tags") or {}
        barcodes = ",".join(meta.get("barcode", [])) or "-"
        if tags.get("device_target"):
            read = f"target: {tags['device_target']}"
        elif tags.get("ocr_status") == "NO_TEXT":
            read = f"no text: {tags.get('ocr_reason', '')}"
        else:
            read = " ".join(str(tags.get("ocr") or "").split()[:5]) or "-"
        confidence = tags.get("ocr_confidence")
        say(f"{p.guid:<30}{track.get('asset_type', '?'):<15}{barcodes[:27]:<28}{read[:37]:<38}"
            f"{confidence if confidence is not None else '-':>5} "
            f"{len(tags.get('ocr_words') or []) or '-':>5}"
            f"{outcome.derivatives.get(p.guid, 0):>7}  {ars_state(track) if track else '?':<10}"
            f"{track.get('jobs_status', '?'):<8}")
    say("(OCR: metadata tags ocr, ocr_confidence, ocr_words, ocr_label_box; a device target's "
        "tag device_target says how it was recognised)")
    say("(ARS: ERDA = in ARS, files archived in ERDA, metadata pushed; checked in ARS itself)")
    children = list(outcome.children.values())
    if children:
        created = sum(c.get("is_in_ars") == "YES" for c in children)
        with_file = sum(bool(f.get("ars_link")) for c in children for f in c.get("file_list", []))
        states: dict[str, int] = {}
        for c in children:
            states[str(c.get("has_new_file"))] = states.get(str(c.get("has_new_file")), 0) + 1
        in_erda = sum(ars_state(c) == "ERDA" for c in children)
        say(f"derivatives: {len(children)} registered, {created} created in ARS under their "
            f"parent, {with_file} with their file in ARS, {in_erda} in ERDA; has_new_file "
            + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))


def check_in_ars(ars: dict[str, Any], outcome: Outcome) -> list[str]:
    """Ask ARS itself (the simulator, over HTTP with the daemon's credentials) whether each
    original is there, archived, with its file and the barcodes the pipeline read."""
    from dasscod.ars import ArsClient
    from dasscod.ars.settings import ArsSettings
    from dasscod.log import configure_logging

    configure_logging(level="WARNING")  # the client's debug lines are not for the table
    settings = ArsSettings.model_validate(ars)

    async def ask() -> list[str]:
        problems = []
        async with ArsClient(settings) as client:
            for p in outcome.planned:
                if p.guid not in outcome.tracks:
                    continue
                status = await client.asset_status(p.guid)
                files = await client.list_files(p.guid)
                asset = await client.get_asset(p.guid)
                barcodes = {s.barcode for s in asset.specimens or [] if s.barcode}
                if status.status != "COMPLETED":
                    problems.append(f"{p.guid}: ARS status {status.status}, expected COMPLETED")
                if not any(f.endswith(f"/{p.guid}.tif") for f in files):
                    problems.append(f"{p.guid}: its file is not in ERDA ({files})")
                if not set(p.expected_barcodes) <= barcodes:
                    problems.append(f"{p.guid}: ARS has barcodes {sorted(barcodes)}, expected "
                                    f"{p.expected_barcodes}")
        return problems

    try:
        return asyncio.run(ask())
    except Exception as exc:  # a report, not a crash: the table is still worth printing
        return [f"asking ARS failed: {type(exc).__name__}: {exc}"]


if __name__ == "__main__":
    sys.exit(main())
