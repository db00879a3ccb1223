"""The daemon with a Slurm cluster reached over SSH: assets from the intake folder go through
every HERB0001 job as real batch jobs on the local test cluster, run as the cluster user with
the system Python (the runner needs only the standard library), calling back over HTTP."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from pymongo import AsyncMongoClient

from dasscod.daemon import Daemon
from dasscod.devstack.stack import REPO_ROOT, LocalStack, deliver
from dasscod.pipeline import load_pipelines
from dasscod.settings import Settings
from tests.slurm.conftest import LocalCluster

pytestmark = pytest.mark.e2e

SYSTEM_PYTHON = "/usr/bin/python3"




@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(),
                    reason=f"{SYSTEM_PYTHON} missing: the cluster user has no Python for jobs")
async def test_assets_run_through_herb0001_as_slurm_jobs_over_ssh(
    slurm_cluster: LocalCluster, shared: Path, tmp_path: Path, mongo_uri: str
) -> None:
    env = slurm_cluster.env
    runs = shared / "runs.jsonl"
    runs.touch(mode=0o666)
    runs.chmod(0o666)  # touch's mode is filtered by the umask
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"slurm_{uuid.uuid4().hex[:8]}")
    stack.write_config()
    data = stack.settings_data()
    data["clusters"] = {
        "local": {  # the name HERB0001's jobs ask for
            "scheduler": "slurm",
            "transport": "ssh",
            "ssh": {"host": env["SSH_HOST"], "port": int(env["SSH_PORT"]),
                    "user": env["SSH_USER"], "key_file": env["SSH_KEY"],
                    "known_hosts": env["SSH_KNOWN_HOSTS"]},
            "partition": slurm_cluster.partition,
            "work_root": str(shared / "work"),
            "state_dir": str(shared / "jobs"),
            "python": SYSTEM_PYTHON,
            "max_jobs": 6,
            "env": {
                "PYTHONPATH": f"{REPO_ROOT / 'hpc'}:{REPO_ROOT}",
                "DASSCO_HPC_MODULES": "tests.hpc_test_module",
                "DASSCO_TEST_LOG": str(runs),
                "DASSCO_CALLBACK_BACKOFF_MAX_S": "2",
            },
        }
    }
    data["log_level"] = "WARNING"
    settings = Settings.model_validate(data)
    guids = [f"slurm-{i}-{uuid.uuid4().hex[:6]}" for i in range(2)]
    for guid in guids:
        deliver(stack.intake, guid)
    daemon = Daemon(settings)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    coll = client[stack.database]["track"]
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            deadline = time.monotonic() + 240
            docs: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                docs = await coll.find({"_id": {"$in": guids}}).to_list()
                if len(docs) == 2 and all(d["jobs_status"] in ("DONE", "ERROR") for d in docs):
                    break
                await anyio.sleep(0.5)
            daemon.stop()
    finally:
        await client.drop_database(stack.database)
        await client.close()
    jobs = [j.name for j in load_pipelines()["PIPEHERB0001"].jobs]
    states = {d["_id"]: [(j["name"], j["status"], j.get("last_error")) for j in d["job_list"]]
              for d in docs}
    assert len(docs) == 2 and all(d["jobs_status"] == "DONE" for d in docs), states
    for doc in docs:
        for job in doc["job_list"]:
            assert job["status"] == "DONE" and job["attempt"] == 1, job
            assert str(job["hpc_job_id"]).isdigit(), "Slurm's job id was recorded"
    executions = [json.loads(line) for line in runs.read_text().splitlines() if line]
    counts = Counter((r["guid"], r["job"], r["attempt"]) for r in executions)
    assert set(counts) == {(g, j, 1) for g in guids for j in jobs}
    assert max(counts.values()) == 1, "a job attempt ran twice"
