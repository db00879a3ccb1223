"""`dasscod cancel` on an asset whose job runs on the local Slurm (over SSH): the job leaves
squeue, the asset is CANCELLED (not ERROR), and the late end of the cancelled job changes
nothing. The daemon runs in this process; the command runs as a process of its own, as an
operator would run it."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from pymongo import AsyncMongoClient

from dasscod.devstack.stack import REPO_ROOT, LocalStack, deliver
from dasscod.wiring import build_daemon
from tests.slurm.conftest import LocalCluster
from tests.slurm.test_daemon_slurm_e2e import job_log, settings_for

pytestmark = pytest.mark.e2e

TOKEN = "carol-slurm-token-0123456789"


async def squeue_ids() -> set[str]:
    done = await anyio.run_process(["squeue", "-h", "-o", "%i"], check=True)
    return set(done.stdout.decode().split())


async def dasscod(port: int, *args: str) -> tuple[int, str]:
    env = {**os.environ, "DASSCOD_CONTROL_TOKEN": TOKEN, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("DASSCOD_CONFIG", None)
    done = await anyio.run_process(
        [sys.executable, "-m", "dasscod", *args, "--url", f"http://127.0.0.1:{port}"],
        check=False, env=env, stderr=-2,  # stderr into stdout, as a terminal shows them
    )  # fmt: skip
    return done.returncode, done.stdout.decode()


async def test_cancel_takes_a_live_slurm_job_off_the_queue_and_the_asset_ends_cancelled(
    slurm_cluster: LocalCluster, shared: Path, tmp_path: Path, mongo_uri: str,
    cluster_python: str,
) -> None:
    runs = job_log(shared)
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"slurm_{uuid.uuid4().hex[:8]}",
                       control_tokens={"carol": TOKEN})
    stack.write_config()
    # Jobs that run long enough to be cancelled while they run.
    settings = settings_for(slurm_cluster, stack, shared, runs, cluster_python,
                            DASSCO_TEST_SLEEP_S="120")
    guid = f"cancel-{uuid.uuid4().hex[:6]}"
    deliver(stack.intake, guid)
    daemon = build_daemon(settings)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    track = client[stack.database]["track"]
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            deadline = time.monotonic() + 120
            doc: dict[str, Any] | None = None
            while time.monotonic() < deadline:
                doc = await track.find_one({"_id": guid})
                if doc and doc["job_list"][0]["status"] == "RUNNING":
                    break
                await anyio.sleep(0.2)
            assert doc and doc["job_list"][0]["status"] == "RUNNING", doc
            job_id = str(doc["job_list"][0]["hpc_job_id"])
            assert job_id in await squeue_ids(), "the job runs on Slurm"
            status, output = await dasscod(stack.port, "cancel", guid, "--reason", "wrong tray")
            assert status == 0, output
            assert f"load: slurm job {job_id} on local cancelled" in output
            while job_id in await squeue_ids():
                assert time.monotonic() < deadline, "the job did not leave squeue"
                await anyio.sleep(0.2)
            refused = await dasscod(stack.port, "cancel", guid)
            assert refused[0] == 1 and "is CANCELLED: nothing to cancel" in refused[1]
            # Give the cancelled job's end (its runner's last callback, the watcher's next
            # look) three watch cycles to change something: it must not.
            await anyio.sleep(3 * settings.timing.watch_s)
            doc = await track.find_one({"_id": guid})
            daemon.stop()
    finally:
        await client.drop_database(stack.database)
        await client.close()
    assert doc is not None
    assert doc["jobs_status"] == "CANCELLED"
    assert {j["status"] for j in doc["job_list"]} == {"CANCELLED"}
    load = doc["history"][-len(doc["job_list"]):]
    assert all(h["to"] == "CANCELLED" and h["by"] == "carol" and h["reason"] == "wrong tray"
               for h in load), load
    assert doc["job_list"][0]["exit_state"] == "CANCELLED"
