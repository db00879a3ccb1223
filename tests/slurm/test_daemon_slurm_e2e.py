"""The daemon with a Slurm cluster reached over SSH: assets from the intake folder go through
every HERB0001 job as real batch jobs on the local test cluster, run as the cluster user by the
runner installed in a venv on the cluster's disk (never from the checkout, which the cluster
user may not be able to read), calling back over HTTP. Then
the same with the cluster's sshd restarted mid-run, and with the Torque adapter and jobs that
die without calling back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from pymongo import AsyncMongoClient

from dasscod.devstack.stack import LocalStack, deliver
from dasscod.pipelines import load_pipelines
from dasscod.settings import Settings
from dasscod.wiring import build_daemon
from tests.slurm.conftest import SETUP, LocalCluster

pytestmark = pytest.mark.e2e

HERB_JOBS = [j.name for j in load_pipelines()["PIPEHERB0001"].jobs]


def settings_for(cluster: LocalCluster, stack: LocalStack, shared: Path, runs: Path,
                 python: str, **job_env: str) -> Settings:
    """`python`: the cluster_python fixture, the runner's venv on the cluster's disk."""
    env = cluster.env
    data = stack.settings_data()
    data["clusters"] = {
        "local": {  # the name HERB0001's jobs ask for
            "scheduler": "slurm",
            "transport": "ssh",
            "ssh": {"host": env["SSH_HOST"], "port": int(env["SSH_PORT"]),
                    "user": env["SSH_USER"], "key_file": env["SSH_KEY"],
                    "known_hosts": env["SSH_KNOWN_HOSTS"]},
            "partition": cluster.partition,
            "work_root": str(shared / "work"),
            "state_dir": str(shared / "jobs"),
            "python": python,
            "max_jobs": 6,
            "env": {
                "DASSCO_HPC_MODULES": "dasscod.devstack.hpc_stand_in",
                "DASSCO_TEST_LOG": str(runs),
                "DASSCO_CALLBACK_BACKOFF_MAX_S": "2",
                **job_env,
            },
        }
    }
    data["timing"]["watch_s"] = 1.0
    data["log_level"] = "WARNING"
    return Settings.model_validate(data)


async def run_assets(
    settings: Settings, stack: LocalStack, mongo_uri: str, n: int,
    meanwhile: Callable[[Any], Awaitable[None]] | None = None,
) -> list[dict[str, Any]]:
    """Deliver `n` assets, run the daemon until they settle (or 240 s), return their tracks."""
    guids = [f"slurm-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    for guid in guids:
        deliver(stack.intake, guid)
    daemon = build_daemon(settings)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    coll = client[stack.database]["track"]
    docs: list[dict[str, Any]] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            if meanwhile is not None:
                await meanwhile(coll)
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                docs = await coll.find({"_id": {"$in": guids}}).to_list()
                if len(docs) == n and all(d["jobs_status"] in ("DONE", "ERROR") for d in docs):
                    break
                await anyio.sleep(0.5)
            daemon.stop()
    finally:
        await client.drop_database(stack.database)
        await client.close()
    return docs


def assert_all_done_once(docs: list[dict[str, Any]], runs: Path) -> None:
    states = {d["_id"]: [(j["name"], j["status"], j.get("last_error")) for j in d["job_list"]]
              for d in docs}
    assert docs and all(d["jobs_status"] == "DONE" for d in docs), states
    for doc in docs:
        for job in doc["job_list"]:
            assert job["status"] == "DONE" and job["attempt"] == 1, job
            assert str(job["hpc_job_id"]).isdigit(), "Slurm's job id was recorded"
    executions = [json.loads(line) for line in runs.read_text().splitlines() if line]
    counts = Counter((r["guid"], r["job"], r["attempt"]) for r in executions)
    assert set(counts) == {(d["_id"], j, 1) for d in docs for j in HERB_JOBS}
    assert max(counts.values()) == 1, "a job attempt ran twice"


def job_log(shared: Path) -> Path:
    runs = shared / "runs.jsonl"
    runs.touch(mode=0o666)
    runs.chmod(0o666)  # touch's mode is filtered by the umask; jobs run as the cluster user
    return runs


async def test_assets_run_through_herb0001_as_slurm_jobs_over_ssh(
    slurm_cluster: LocalCluster, shared: Path, tmp_path: Path, mongo_uri: str,
    cluster_python: str,
) -> None:
    runs = job_log(shared)
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"slurm_{uuid.uuid4().hex[:8]}")
    stack.write_config()
    docs = await run_assets(settings_for(slurm_cluster, stack, shared, runs, cluster_python), stack,
                            mongo_uri, 2)
    assert len(docs) == 2
    assert_all_done_once(docs, runs)


async def test_sshd_restarted_mid_run_loses_nothing(
    slurm_cluster: LocalCluster, shared: Path, tmp_path: Path, mongo_uri: str,
    cluster_python: str,
) -> None:
    runs = job_log(shared)
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"slurm_{uuid.uuid4().hex[:8]}")
    stack.write_config()
    settings = settings_for(slurm_cluster, stack, shared, runs, cluster_python,
                            DASSCO_TEST_SLEEP_S="1")
    # A submission the restart cut short is looked up by name for submit_timeout_s before it
    # counts as never submitted: the default (120 s) would be most of this test's time.
    settings.clusters["local"] = settings.clusters["local"].model_copy(
        update={"submit_timeout_s": 20.0})
    pid_file = Path(slurm_cluster.env["DASSCOD_TEST_CLUSTER_DIR"]) / "run" / "sshd.pid"

    async def restart_sshd(coll: Any) -> None:
        deadline = time.monotonic() + 120
        while await coll.count_documents({"job_list.1.status": "DONE"}) < 1:
            assert time.monotonic() < deadline, "no asset got past its first job"
            await anyio.sleep(0.2)
        # sshd goes away with every session on it: the daemon's connection drops.
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
        await anyio.run_process(["pkill", "-u", slurm_cluster.env["SSH_USER"], "-x", "sshd"],
                                check=False)
        await anyio.sleep(3)  # an outage of a few seconds, not a race being waited out
        await anyio.run_process([str(SETUP)], check=True)

    docs = await run_assets(settings, stack, mongo_uri, 2, meanwhile=restart_sshd)
    assert len(docs) == 2
    assert_all_done_once(docs, runs)


async def test_torque_jobs_that_die_without_calling_back_end_in_error_with_their_exit_code(
    slurm_cluster: LocalCluster, shared: Path, tmp_path: Path, mongo_uri: str,
    cluster_python: str,
) -> None:
    """The daemon with the Torque adapter over SSH (the wrappers' qsub/qstat): every job's
    command is /bin/false, so it exits 1 without a single callback. The wrappers' qstat only
    says C; the job's exit file says how it ended, so each attempt is retried with "exit code
    1" and the last one is an ERROR with it."""
    if not shutil.which("qsub"):  # decided after setup_cluster.sh installed them
        pytest.skip("no Torque wrappers: install slurm-wlm-torque")
    runs = job_log(shared)
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"slurm_{uuid.uuid4().hex[:8]}")
    stack.write_config()
    settings = settings_for(slurm_cluster, stack, shared, runs, cluster_python)
    settings.clusters["local"] = settings.clusters["local"].model_copy(
        update={"scheduler": "torque", "python": "/bin/false"})
    settings.timing = settings.timing.model_copy(
        update={"retry_backoff_s": 0.1, "retry_backoff_max_s": 0.2})
    [doc] = await run_assets(settings, stack, mongo_uri, 1)
    load = next(j for j in doc["job_list"] if j["name"] == "load")
    assert doc["jobs_status"] == "ERROR" and load["status"] == "ERROR", load
    assert load["attempt"] == load["max_attempts"] == 3
    assert load["exit_state"] == "FAILED"
    assert load["last_error"] == "job ended (FAILED, exit code 1) without reporting back", load
    lost = [h for h in doc["history"] if h["job"] == "load" and h["to"] in ("RETRY", "ERROR")]
    assert len(lost) == 3 and all("exit code 1" in h["cause"] for h in lost), lost
    assert runs.read_text() == "", "no job ran the module"
