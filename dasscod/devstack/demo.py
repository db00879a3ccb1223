"""`make demo`: the embedded stack on one machine, a batch of assets through HERB0001.

Starts the test store (SecantusDB) and `dasscod run` with the direct scheduler, delivers
`DEMO_ASSETS` assets (default 10) to the intake folder, shows progress while they move through
the pipeline, and ends with a table per asset. Exits 0 only if every asset finished, and leaves
no process running. Until the real HERB0001 modules land in `hpc/`, the jobs run the stand-in
module `tests/hpc_test_module.py`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from dasscod.devstack.mongo import mongo_server
from dasscod.devstack.stack import LocalStack, deliver, stop_daemon

ACTIVE = ("STARTING", "QUEUED", "RUNNING")
TIMEOUT_S = float(os.environ.get("DEMO_TIMEOUT_S", "600"))


def say(message: str) -> None:
    print(message, flush=True)


def main() -> int:
    n_assets = int(os.environ.get("DEMO_ASSETS", "10"))
    started = time.monotonic()
    keep = os.environ.get("DEMO_KEEP")  # a folder to keep the stack's files in, for reading
    with tempfile.TemporaryDirectory(prefix="dasscod-demo-") as tmp:
        root = Path(keep) if keep else Path(tmp)
        with mongo_server(root / "mongo") as uri:
            stack = LocalStack(root / "stack", uri, database=f"demo_{uuid.uuid4().hex[:8]}")
            stack.write_config()
            say(f"stack in {root}; daemon log: {stack.root / 'daemon.log'}")
            proc = stack.start_daemon()
            try:
                guids = [f"demo-{i:03d}-{uuid.uuid4().hex[:6]}" for i in range(n_assets)]
                for guid in guids:
                    deliver(stack.intake, guid)
                say(f"delivered {n_assets} assets to {stack.intake}")
                docs = watch(stack, guids, proc.poll)
            finally:
                status = stop_daemon(proc)
            table(docs)
    wall = time.monotonic() - started
    ok = status == 0 and len(docs) == n_assets and all(d["jobs_status"] == "DONE" for d in docs)
    say(f"wall time {wall:.1f} s; daemon exit status {status}; "
        f"{'all assets DONE' if ok else 'NOT all assets finished'}")
    return 0 if ok else 1


def watch(stack: LocalStack, guids: list[str], exited: Any) -> list[dict[str, Any]]:
    """Print a progress line whenever the counts change, until every asset has settled."""
    client: MongoClient[dict[str, Any]] = MongoClient(stack.mongo_uri, tz_aware=True)
    track = client[stack.database]["track"]
    deadline = time.monotonic() + TIMEOUT_S
    last = ""
    docs: list[dict[str, Any]] = []
    try:
        while time.monotonic() < deadline:
            if exited() is not None:
                say("the daemon exited early; see its log")
                break
            docs = list(track.find({"_id": {"$in": guids}}))
            done = sum(d["jobs_status"] == "DONE" for d in docs)
            error = sum(d["jobs_status"] == "ERROR" for d in docs)
            running = sum(
                j["status"] in ACTIVE for d in docs for j in d["job_list"]
            )
            line = (f"taken {len(docs)}/{len(guids)}  jobs running {running}  "
                    f"done {done}  error {error}")
            if line != last:
                say(line)
                last = line
            if len(docs) == len(guids) and done + error == len(guids):
                break
            time.sleep(0.5)
    finally:
        client.close()
    return docs


def table(docs: list[dict[str, Any]]) -> None:
    say("")
    say(f"{'asset':<22}{'status':<10}{'jobs':<44}{'attempts':>9}{'seconds':>9}")
    for doc in sorted(docs, key=lambda d: d["_id"]):
        jobs = " ".join(f"{j['name']}:{j['status'][0]}" for j in doc["job_list"])
        attempts = sum(j["attempt"] for j in doc["job_list"])
        ends = [j["job_end_time"] for j in doc["job_list"] if j.get("job_end_time")]
        seconds = (max(ends) - doc["created_timestamp"]).total_seconds() if ends else 0.0
        say(f"{doc['_id']:<22}{doc['jobs_status']:<10}{jobs:<44}{attempts:>9}{seconds:>9.1f}")


if __name__ == "__main__":
    sys.exit(main())
