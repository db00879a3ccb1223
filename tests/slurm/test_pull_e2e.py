"""Pull mode end to end: the daemon never runs a command on the cluster; `dassco-hpc agent`
(run `--once` in a loop by the test, as from cron) claims the jobs, submits them with the
Torque wrappers' qsub on the local test cluster and reports back, and the jobs call back over
HTTP. One job is submitted by an agent that "dies" before reporting it: the next runs find it
by its name, and it runs exactly once. The agent cancels the strays the daemon names and
removes the files retention let go."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from dasscod.devstack.stack import REPO_ROOT, LocalStack, deliver
from dasscod.pipelines import load_pipelines
from dasscod.settings import Settings
from dasscod.wiring import build_daemon
from tests.slurm.conftest import LocalCluster

pytestmark = pytest.mark.e2e

AGENT_TOKEN = "pull-agent-credential-0123456789"


def pull_settings(stack: LocalStack, shared: Path, runs: Path, partition: str,
                  python: str = "/bin/false") -> Settings:
    """`python`: the cluster_python fixture where jobs must run."""
    stack.write_config()
    data = stack.settings_data()
    data["clusters"] = {
        "local": {
            "scheduler": "pull",
            "pull_submit": "torque",
            "agent_token": AGENT_TOKEN,
            "lease_s": 3,
            "partition": partition,
            "work_root": str(shared / "work"),
            # The agent's --state-dir: the job scripts' exit files are read from there.
            "state_dir": str(shared / "agent"),
            "python": python,
            "env": {
                "DASSCO_HPC_MODULES": "dasscod.devstack.hpc_stand_in",
                "DASSCO_TEST_LOG": str(runs),
                "DASSCO_CALLBACK_BACKOFF_MAX_S": "2",
            },
        }
    }
    data["log_level"] = "WARNING"
    return Settings.model_validate(data)


def agent(url: str, token_file: Path, state: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "hpc")}
    return subprocess.run(
        [sys.executable, "-m", "dassco_hpc", "agent", "--cluster", "local", "--url", url,
         "--token-file", str(token_file), "--state-dir", str(state), "--submit", "torque",
         "--once", "--deadline", "10"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )


async def agent_until(
    coll: AsyncCollection[dict[str, Any]], url: str, token_file: Path, shared: Path,
    guids: list[str], settled: Callable[[list[dict[str, Any]]], bool], timeout_s: float,
) -> tuple[list[dict[str, Any]], list[subprocess.CompletedProcess[str]]]:
    """Run the agent once every half second until `settled` holds for the assets' tracks (or
    `timeout_s` passed): the tracks, and the agent's runs."""
    runs_of_agent: list[subprocess.CompletedProcess[str]] = []
    docs: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs_of_agent.append(
            await anyio.to_thread.run_sync(agent, url, token_file, shared / "agent")
        )
        docs = await coll.find({"_id": {"$in": guids}}).to_list()
        if settled(docs):
            break
        await anyio.sleep(0.5)
    return docs, runs_of_agent


def jobs_named(name: str) -> list[str]:
    done = subprocess.run(["squeue", "-h", "--states=all", f"--name={name}", "-o", "%i"],
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.split()


async def test_an_agent_runs_herb0001_and_repairs_a_crash_between_qsub_and_report(
    slurm_cluster: LocalCluster, shared: Path, tmp_path: Path, mongo_uri: str,
    cluster_python: str,
) -> None:
    runs = shared / "runs.jsonl"
    runs.touch()
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"pull_{uuid.uuid4().hex[:8]}")
    settings = pull_settings(stack, shared, runs, slurm_cluster.partition, cluster_python)
    url = settings.listener.callback_base
    token_file = tmp_path / "agent.token"
    token_file.write_text(AGENT_TOKEN + "\n")
    guids = [f"pull-{i}-{uuid.uuid4().hex[:6]}" for i in range(2)]
    for guid in guids:
        deliver(stack.intake, guid)
    daemon = build_daemon(settings)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    coll = client[stack.database]["track"]
    crashed: dict[str, Any] = {}
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            with anyio.fail_after(30):
                await daemon.ready.wait()
            # The agent that dies: claims one job, submits it, never reports it.
            async with httpx.AsyncClient() as http:
                deadline = time.monotonic() + 30
                while not crashed and time.monotonic() < deadline:
                    answer = await http.post(f"{url}/agent/local/claim", json={"max": 1},
                                             headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
                    assert answer.status_code == 200, answer.text
                    if answer.json():
                        crashed = answer.json()[0]
                    else:
                        await anyio.sleep(0.2)
            assert crashed, "no job was claimed for the pull cluster"
            script = shared / f"{crashed['name']}.sh"
            script.write_text(crashed["script"])
            script.chmod(0o600)
            qsub = await anyio.run_process(
                ["qsub", "-o", str(shared / "crashed.out"), "-e", str(shared / "crashed.err"),
                 str(script)], check=False)
            assert qsub.returncode == 0, qsub.stdout + qsub.stderr
            crashed_id = qsub.stdout.decode().strip()
            docs, runs_of_agent = await agent_until(
                coll, url, token_file, shared, guids, timeout_s=240,
                settled=lambda docs: len(docs) == 2
                and all(d["jobs_status"] in ("DONE", "ERROR") for d in docs),
            )
            daemon.stop()
    finally:
        await client.drop_database(stack.database)
        await client.close()
    failures = [f"{r.returncode}: {r.stderr[-2000:]}" for r in runs_of_agent if r.returncode]
    assert not failures, failures
    jobs = [j.name for j in load_pipelines()["PIPEHERB0001"].jobs]
    states = {d["_id"]: [(j["name"], j["status"], j.get("last_error")) for j in d["job_list"]]
              for d in docs}
    assert len(docs) == 2 and all(d["jobs_status"] == "DONE" for d in docs), states
    for doc in docs:
        for job in doc["job_list"]:
            assert job["status"] == "DONE" and job["attempt"] == 1, job
            assert str(job["hpc_job_id"]).isdigit(), "the scheduler's job id was recorded"
    executions = [json.loads(line) for line in runs.read_text().splitlines() if line]
    counts = Counter((r["guid"], r["job"], r["attempt"]) for r in executions)
    assert set(counts) == {(g, j, 1) for g in guids for j in jobs}
    assert max(counts.values()) == 1, "a job attempt ran twice"
    recovered = next(j for d in docs if d["_id"] == crashed["asset_guid"]
                     for j in d["job_list"] if j["name"] == crashed["job"])
    assert str(recovered["hpc_job_id"]) == crashed_id, "the crashed submission is used"
    assert crashed_id in jobs_named(crashed["name"])
    assert len(jobs_named(crashed["name"])) == 1, "the crashed agent's job was submitted again"


async def until_error(settings: Settings, stack: LocalStack, mongo_uri: str, shared: Path,
                      tmp_path: Path, guid: str
                      ) -> tuple[dict[str, Any] | None, list[subprocess.CompletedProcess[str]]]:
    """Run the daemon and the agent (once every half second) until the asset is in ERROR
    (or 90 s passed): its track, and the agent's runs."""
    url = settings.listener.callback_base
    token_file = tmp_path / "agent.token"
    token_file.write_text(AGENT_TOKEN + "\n")
    deliver(stack.intake, guid)
    daemon = build_daemon(settings)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    coll = client[stack.database]["track"]
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            with anyio.fail_after(30):
                await daemon.ready.wait()
            docs, runs_of_agent = await agent_until(
                coll, url, token_file, shared, [guid], timeout_s=90,
                settled=lambda docs: any(d["jobs_status"] == "ERROR" for d in docs),
            )
            daemon.stop()
    finally:
        await client.drop_database(stack.database)
        await client.close()
    return (docs[0] if docs else None), runs_of_agent


async def test_a_submission_the_scheduler_refuses_is_an_error_with_its_message(
    slurm_cluster: LocalCluster, shared: Path, tmp_path: Path, mongo_uri: str
) -> None:
    """A queue the cluster does not have: the wrappers' qsub refuses the job, the agent
    reports sbatch's message, and the daemon puts the job in ERROR with it at once (retrying
    cannot create the queue) instead of the job being claimed again every lease."""
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"pull_{uuid.uuid4().hex[:8]}")
    settings = pull_settings(stack, shared, shared / "runs.jsonl", "nosuchqueue")
    guid = f"pull-refused-{uuid.uuid4().hex[:6]}"
    doc, runs_of_agent = await until_error(settings, stack, mongo_uri, shared, tmp_path, guid)
    assert doc is not None and doc["jobs_status"] == "ERROR", doc
    load = next(j for j in doc["job_list"] if j["name"] == "load")
    assert load["status"] == "ERROR" and load["attempt"] == 1, load
    assert load["last_error"].startswith("qsub refused the job on the cluster (exit status 1)")
    assert "invalid partition" in load["last_error"].lower(), load["last_error"]
    assert all(done.returncode == 0 for done in runs_of_agent), runs_of_agent[-1].stderr
    assert any("refused" in done.stderr for done in runs_of_agent)
    assert jobs_named(f"dassco.{guid}.load.1") == [], "nothing reached the queue"


async def test_jobs_that_die_without_calling_back_are_settled_from_their_exit_files(
    slurm_cluster: LocalCluster, shared: Path, tmp_path: Path, mongo_uri: str
) -> None:
    """Every job's command is /bin/false: it exits 1 without a callback. The wrappers' qstat
    only says C; the agent sends the job's exit file along, and the daemon retries each
    attempt with "exit code 1" and ends in ERROR with it."""
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"pull_{uuid.uuid4().hex[:8]}")
    settings = pull_settings(stack, shared, shared / "runs.jsonl", slurm_cluster.partition)
    settings.clusters["local"] = settings.clusters["local"].model_copy(
        update={"python": "/bin/false"})
    settings.timing = settings.timing.model_copy(
        update={"retry_backoff_s": 0.1, "retry_backoff_max_s": 0.2})
    guid = f"pull-false-{uuid.uuid4().hex[:6]}"
    doc, runs_of_agent = await until_error(settings, stack, mongo_uri, shared, tmp_path, guid)
    assert doc is not None and doc["jobs_status"] == "ERROR", doc
    load = next(j for j in doc["job_list"] if j["name"] == "load")
    assert (load["status"], load["attempt"], load["exit_state"]) == ("ERROR", 3, "FAILED")
    assert load["last_error"] == "job ended (FAILED, exit code 1) without reporting back", load
    assert all(done.returncode == 0 for done in runs_of_agent), runs_of_agent[-1].stderr
    for attempt in (1, 2, 3):
        assert jobs_named(f"dassco.{guid}.load.{attempt}"), "each attempt ran once"
        assert len(jobs_named(f"dassco.{guid}.load.{attempt}")) == 1


def squeue_state(job_id: str) -> str:
    done = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"],
                          capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip() or "GONE"


async def test_the_agent_cancels_its_strays_and_removes_what_retention_let_go(
    slurm_cluster: LocalCluster, shared: Path, tmp_path: Path, mongo_uri: str
) -> None:
    """A job the agent submitted for an asset the daemon does not track is cancelled at the
    agent's first run; a job named like ours but submitted from elsewhere is left alone. An
    asset whose jobs end in ERROR is let go by retention (retention_days 0): the agent removes
    its work folder and its attempts' files on the cluster, and the daemon stops asking."""
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"pull_{uuid.uuid4().hex[:8]}")
    settings = pull_settings(stack, shared, shared / "runs.jsonl", slurm_cluster.partition)
    settings.intake = settings.intake.model_copy(update={"retention_days": 0.0})
    settings.timing = settings.timing.model_copy(
        update={"retry_backoff_s": 0.1, "retry_backoff_max_s": 0.2, "housekeeping_s": 0.5})
    state = shared / "agent"
    state.mkdir(mode=0o777)
    held = {}
    for kind, folder in (("stray", state), ("elsewhere", shared)):
        name = f"dassco.{kind}-{uuid.uuid4().hex[:6]}.load.1"
        script = folder / f"{name}.sh"
        script.write_text(f"#!/bin/sh\n#PBS -N {name}\nsleep 300\n")
        qsub = await anyio.run_process(["qsub", "-h", "-o", "/dev/null", "-e", "/dev/null",
                                        str(script)], check=False)
        assert qsub.returncode == 0, qsub.stdout + qsub.stderr
        held[kind] = qsub.stdout.decode().strip()
    guid = f"pull-kept-{uuid.uuid4().hex[:6]}"
    work = shared / "work" / guid
    (work / "derivatives").mkdir(parents=True)  # what load and derivatives leave there
    (work / "derivatives" / "a.jpg").write_bytes(b"jpeg")
    token_file = tmp_path / "agent.token"
    token_file.write_text(AGENT_TOKEN + "\n")
    deliver(stack.intake, guid)
    daemon = build_daemon(settings)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    coll = client[stack.database]["track"]

    def cleaned(docs: list[dict[str, Any]]) -> bool:
        return bool(docs) and docs[0]["jobs_status"] == "ERROR" \
            and docs[0]["temporary_files_local"] == "NO" and not docs[0].get("agent_cleanup")

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            with anyio.fail_after(30):
                await daemon.ready.wait()
            first = await anyio.to_thread.run_sync(
                agent, settings.listener.callback_base, token_file, state)
            stray_after_first_run = squeue_state(held["stray"])
            docs, runs_of_agent = await agent_until(
                coll, settings.listener.callback_base, token_file, shared, [guid],
                settled=cleaned, timeout_s=120)
            elsewhere_state = squeue_state(held["elsewhere"])
            daemon.stop()
    finally:
        await client.drop_database(stack.database)
        await client.close()
        await anyio.run_process(["scancel", held["elsewhere"], held["stray"]], check=False)
    assert first.returncode == 0, first.stderr
    assert stray_after_first_run in ("CANCELLED", "GONE"), stray_after_first_run
    assert f"cancelling {held['stray']}" in first.stderr
    assert held["elsewhere"] not in first.stderr + "".join(r.stderr for r in runs_of_agent)
    assert elsewhere_state == "PENDING", "a job submitted from elsewhere is never touched"
    assert cleaned(docs), docs
    assert all(r.returncode == 0 for r in runs_of_agent), runs_of_agent[-1].stderr
    assert any("forgotten 1" in r.stderr for r in runs_of_agent)
    assert not work.exists()
    assert not [p.name for p in state.iterdir() if guid in p.name]
