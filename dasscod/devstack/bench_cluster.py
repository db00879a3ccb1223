"""Issue #5's numbers on the local Slurm test cluster (tests/infra/setup_cluster.sh), reached
over SSH as the daemon reaches a real login node. One JSON object on the last line of stdout;
progress on stderr. Without the cluster (no cluster.env) the object says why it was skipped.

Phases:
1. 1000 held jobs submitted through the Slurm adapter over one SSH connection, 8 channels in
   parallel (`submit_rate_per_s`); then watcher cycles over 1000 tracks whose load job is
   QUEUED with those job ids, counting the scheduler commands a cycle sends
   (`status_queries_per_cycle`: a cycle between two stray sweeps; the first cycle, which also
   lists the cluster's jobs for the sweep, in `status_commands_first_cycle`); then one scancel
   for all of them, and a check that the queue holds none of them any more.
2. Assets through HERB0001 with the daemon, every job a Slurm batch job that sleeps
   `DASSCO_TEST_SLEEP_S` seconds in the test module: `slurm_e2e_efficiency` = (sum of the
   jobs' run times / job slots) / wall time, job slots = min(max_jobs, the node's CPUs);
   what it misses, per job, split into `slurm_e2e_overhead_in_job_s` (started to finished
   callback beyond the module's run time) and `slurm_e2e_overhead_between_jobs_s` (the rest:
   Slurm starting the next job, the job's Python start, the daemon's hand-off).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
from pymongo import AsyncMongoClient

from dasscod.cluster.base import Command, CommandResult, JobSpec, Transport
from dasscod.cluster.configured import Cluster
from dasscod.cluster.slurm import SlurmScheduler
from dasscod.cluster.ssh import SshTarget, SshTransport
from dasscod.devstack.mongo import mongo_server
from dasscod.devstack.stack import REPO_ROOT, LocalStack, deliver
from dasscod.log import configure_logging
from dasscod.model import JobStatus, Track
from dasscod.pipeline import Event, JobEvent, Pipeline, new_track_fields, plan
from dasscod.pipelines import load_pipelines
from dasscod.services.launch import Launcher, scheduler_job_name
from dasscod.settings import ClusterSettings, Settings, TimingSettings
from dasscod.store import Stores
from dasscod.store.codec import to_bson
from dasscod.supervisors.watch import STRAYS_EVERY_S, Watcher
from dasscod.wiring import build_daemon

CLUSTER_DIR = Path(os.environ.get("DASSCOD_TEST_CLUSTER_DIR", "/var/lib/dasscod-test-cluster"))
SETUP = REPO_ROOT / "tests" / "infra" / "setup_cluster.sh"
HELD_JOBS = int(os.environ.get("BENCH_SLURM_HELD_JOBS", "1000"))
SUBMIT_PARALLEL = 8
#: Issue #5 asks for 50; on the 2-CPU test node 50 assets (300 jobs of 2 s) take longer
#: than the bench should, so 20 by default.
E2E_ASSETS = int(os.environ.get("BENCH_SLURM_ASSETS", "20"))
E2E_SLEEP_S = 2.0
E2E_MAX_JOBS = 6
SYSTEM_PYTHON = "/usr/bin/python3"
CLUSTER = "local"  # the name HERB0001's jobs ask for


def progress(message: str) -> None:
    print(f"[bench-cluster] {message}", file=sys.stderr, flush=True)


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def ssh_target(env: Mapping[str, str]) -> SshTarget:
    return SshTarget(host=env["SSH_HOST"], port=int(env["SSH_PORT"]), user=env["SSH_USER"],
                     key_file=Path(env["SSH_KEY"]), known_hosts=Path(env["SSH_KNOWN_HOSTS"]))


def cluster_settings(env: Mapping[str, str], shared: Path, **extra: Any) -> ClusterSettings:
    return ClusterSettings.model_validate({
        "scheduler": "slurm",
        "transport": "ssh",
        "ssh": {"host": env["SSH_HOST"], "port": int(env["SSH_PORT"]), "user": env["SSH_USER"],
                "key_file": env["SSH_KEY"], "known_hosts": env["SSH_KNOWN_HOSTS"]},
        "partition": env["SLURM_PARTITION"],
        "work_root": str(shared / "work"),
        "state_dir": str(shared / "jobs"),
        "python": SYSTEM_PYTHON,
        **extra,
    })


class CountingTransport(Transport):
    """A transport that counts the commands it runs, by program (`sh -c SCRIPT NAME ...`
    counts as NAME, e.g. dasscod-sbatch)."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.name = inner.name
        self.counts: Counter[str] = Counter()

    async def execute(self, command: Command) -> CommandResult:
        argv = command.argv
        program = argv[3] if len(argv) > 3 and argv[0] == "sh" and argv[1] == "-c" else argv[0]
        self.counts[program] += 1
        return await self.inner.execute(command)

    async def close(self) -> None:
        await self.inner.close()


# ------------------------------------------------------------------------------ phase 1


def queued_track(guid: str, job_id: str, pipeline: Pipeline, now: datetime) -> Track:
    """A HERB0001 track whose load job the dispatcher claimed on CLUSTER and Slurm took."""
    track = new_track_fields(
        Track.model_validate({"_id": guid, "pipeline": pipeline.name,
                              "job_list": pipeline.initial_jobs()}), pipeline, now,
    )
    step = plan(track, [JobEvent("load", Event.CLAIM, cluster=CLUSTER)], pipeline=pipeline,
                now=now, cause="bench")
    step = plan(step.track, [JobEvent("load", Event.SUBMITTED, attempt=1, hpc_job_id=job_id)],
                pipeline=pipeline, now=now, cause="bench")
    if step.track.job("load").status is not JobStatus.QUEUED:
        raise RuntimeError(f"{guid}: load is {step.track.job('load').status}, not QUEUED")
    return step.track


async def held_jobs_phase(env: Mapping[str, str], uri: str, shared: Path) -> dict[str, Any]:
    transport = CountingTransport(SshTransport(CLUSTER, ssh_target(env)))
    settings = cluster_settings(env, shared, sbatch_options=["--hold"])
    scheduler = SlurmScheduler(transport, state_dir=PurePosixPath(shared / "held"),
                               partition=env["SLURM_PARTITION"], sbatch_options=("--hold",))
    cluster = Cluster(CLUSTER, settings, transport, scheduler)
    guids = [f"held-{i:05d}-{uuid.uuid4().hex[:6]}" for i in range(HELD_JOBS)]
    job_ids: dict[str, str] = {}
    try:
        # -- submissions: SUBMIT_PARALLEL workers sharing the one connection
        progress(f"submitting {len(guids)} held jobs, {SUBMIT_PARALLEL} in parallel over one "
                 "SSH connection")
        await transport.run(["true"])  # connect first: the rate is for submissions only
        pending = list(guids)

        async def worker() -> None:
            while pending:
                guid = pending.pop()
                spec = JobSpec(name=scheduler_job_name(guid, "load", 1), argv=("true",),
                               workdir=PurePosixPath(shared / "work" / guid), time_limit_s=60,
                               memory_mb=16)
                job_ids[guid] = await scheduler.submit(spec)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(SUBMIT_PARALLEL):
                tg.start_soon(worker)
        submit_s = time.perf_counter() - started
        progress(f"submitted {len(job_ids)} in {submit_s:.1f} s")

        # -- one watcher cycle over 1000 QUEUED tracks
        pipelines = load_pipelines()
        herb = pipelines["PIPEHERB0001"]
        stores = Stores.connect(uri, f"bench_watch_{uuid.uuid4().hex[:8]}", pipelines)
        try:
            await stores.ensure_indexes()
            now = datetime.now().astimezone()
            docs = [to_bson(queued_track(g, job_ids[g], herb, now).to_document()) for g in guids]
            await stores.track.collection.insert_many(docs)
            launcher = Launcher(stores=stores, clusters={CLUSTER: cluster}, pipelines=pipelines,
                                callback_base="http://127.0.0.1:9/", token_secret="x" * 32,
                                token_ttl_s=3600)
            watcher = Watcher(cluster, stores=stores, pipelines=pipelines, launcher=launcher,
                              timing=TimingSettings(), stopping=anyio.Event())
            transport.counts.clear()
            progress(f"a first watcher cycle over {len(docs)} queued tracks (with the sweep)")
            await watcher.check_once()
            # The first cycle also runs the stray sweep (one more listing), which then waits
            # STRAYS_EVERY_S: the steady state is the second cycle.
            first_commands = dict(transport.counts)
            transport.counts.clear()
            progress("a second cycle, as every cycle runs until the next sweep is due")
            started = time.perf_counter()
            await watcher.check_once()
            cycle_s = time.perf_counter() - started
            cycle_commands = dict(transport.counts)
            still_queued = await stores.track.collection.count_documents(
                {"active_clusters": CLUSTER}
            )
            await stores.client.drop_database(stores.db.name)
        finally:
            await stores.close()
        progress(f"cycle: {cycle_commands} in {cycle_s:.2f} s; {still_queued} tracks still "
                 "active")
    finally:
        leftover = await cancel_all(transport, sorted(job_ids.values(), key=int))
        await transport.close()
    return {
        "status_queries_per_cycle": sum(cycle_commands.values()),
        "status_commands_per_cycle": cycle_commands,
        "status_commands_first_cycle": first_commands,
        "stray_sweep_every_s": STRAYS_EVERY_S,
        "status_cycle_jobs": len(job_ids),
        "status_cycle_s": round(cycle_s, 2),
        "status_cycle_tracks_still_active": still_queued,
        "submit_rate_per_s": round(len(job_ids) / submit_s, 1),
        "submit_count": len(job_ids),
        "submit_parallel_channels": SUBMIT_PARALLEL,
        "held_jobs_left_in_queue": leftover,
    }


async def cancel_all(transport: CountingTransport, job_ids: list[str]) -> int:
    """One scancel for all of them; returns how many are still pending or running."""
    if not job_ids:
        return 0
    progress(f"cancelling {len(job_ids)} held jobs with one scancel")
    done = await transport.run(["scancel", *job_ids], timeout=120)
    if done.exit_status != 0:
        progress(f"scancel: exit status {done.exit_status}: {done.stderr.strip()[:300]}")
    wanted = set(job_ids)
    left: set[str] = set()
    for _ in range(20):
        # Default squeue states: pending, running, completing -- cancelled jobs are gone.
        queue = await transport.run(["squeue", "--noheader", "--format=%i"], timeout=60)
        left = wanted & set(queue.stdout.split())
        if not left:
            break
        await anyio.sleep(0.5)
    if left:
        progress(f"{len(left)} held jobs still in the queue after scancel")
    return len(left)


# ------------------------------------------------------------------------------ phase 2


def node_cpus() -> int:
    out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return max(int(x.rstrip("+")) for x in out.split())


def runner_copy(target: Path) -> Path:
    """The job runner and the stand-in module copied to the cluster's shared folder, readable
    by the cluster user: the checkout may sit in a folder only its owner can enter (a 0700
    home or `mktemp -d`), as a real cluster's jobs would never see the daemon's checkout."""
    stand_in = target / "dasscod" / "devstack"
    stand_in.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO_ROOT / "hpc" / "dassco_hpc", target / "dassco_hpc", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "dasscod" / "devstack" / "hpc_stand_in.py", stand_in)
    (stand_in / "__init__.py").touch()
    for top, _, files in os.walk(target):
        Path(top).chmod(0o755)
        for name in files:
            (Path(top) / name).chmod(0o644)
    return target


async def e2e_phase(env: Mapping[str, str], uri: str, root: Path, shared: Path) -> dict[str, Any]:
    runs = shared / "runs.jsonl"
    runs.touch(mode=0o666)
    runs.chmod(0o666)
    stack = LocalStack(root / "e2e", uri, database=f"bench_slurm_{uuid.uuid4().hex[:8]}")
    stack.write_config()
    data = stack.settings_data()
    data["clusters"] = {CLUSTER: cluster_settings(env, shared).model_dump(mode="json")}
    data["clusters"][CLUSTER].update(
        max_jobs=E2E_MAX_JOBS,
        env={
            "PYTHONPATH": str(runner_copy(shared / "runner")),
            "DASSCO_HPC_MODULES": "dasscod.devstack.hpc_stand_in",
            "DASSCO_TEST_LOG": str(runs),
            "DASSCO_TEST_SLEEP_S": f"{E2E_SLEEP_S:g}",
            "DASSCO_CALLBACK_BACKOFF_MAX_S": "2",
        },
    )
    data["intake"]["settle_s"] = 0.0
    data["intake"]["poll_s"] = 0.1
    data["log_level"] = "WARNING"
    settings = Settings.model_validate(data)
    cpus = node_cpus()
    slots = min(E2E_MAX_JOBS, cpus)
    guids = [f"sb-{i:03d}-{uuid.uuid4().hex[:6]}" for i in range(E2E_ASSETS)]
    daemon = build_daemon(settings)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    coll = client[stack.database]["track"]
    timeout_s = max(300.0, E2E_ASSETS * 6 * (E2E_SLEEP_S + 10) / slots)
    docs: list[dict[str, Any]] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            await daemon.ready.wait()
            progress(f"e2e: {len(guids)} assets through HERB0001 on Slurm, {slots} job slots "
                     f"(max_jobs {E2E_MAX_JOBS}, {cpus} CPUs), jobs sleep {E2E_SLEEP_S:g} s")
            started = time.monotonic()
            for guid in guids:
                deliver(stack.intake, guid)
            deadline = started + timeout_s
            while time.monotonic() < deadline:
                docs = await coll.find({"_id": {"$in": guids}}).to_list()
                if len(docs) == len(guids) and all(
                    d["jobs_status"] in ("DONE", "ERROR") for d in docs
                ):
                    break
                await anyio.sleep(0.2)
            wall = time.monotonic() - started
            daemon.stop()
        # Our jobs left behind if the run did not finish (none when it did).
        await slurm_cancel_names(env, shared)
    finally:
        await client.drop_database(stack.database)
        await client.close()
    finished = sum(d["jobs_status"] == "DONE" for d in docs)
    if finished != len(guids):
        states = Counter(str(d["jobs_status"]) for d in docs)
        raise RuntimeError(f"e2e: {finished}/{len(guids)} assets done within {timeout_s:.0f} s "
                           f"({dict(states)})")
    run_times = [float(j["run_time_s"]) for d in docs for j in d["job_list"]
                 if j.get("run_time_s") is not None]
    executions = [json.loads(line) for line in runs.read_text().splitlines() if line]
    busy = sum(run_times)
    efficiency = busy / slots / wall
    # What each job cost beyond its run time, per slot: Slurm's start-up, the runner, the
    # callbacks and the daemon's hand-off to the next job.
    overhead = (wall * slots - busy) / max(1, len(run_times))
    # Split of that overhead: from the started to the finished callback beyond the module's
    # run time (the runner and its callbacks), and the rest of each slot's time, between one
    # job's finished callback and the next one's started callback (Slurm noticing the end and
    # starting the next job, the job's shell and Python start, the daemon's hand-off).
    spans = [(j["job_end_time"] - j["job_start_time"]).total_seconds()
             for d in docs for j in d["job_list"]
             if j.get("job_start_time") is not None and j.get("job_end_time") is not None]
    in_job = (sum(spans) - busy) / max(1, len(spans))
    between = (wall * slots - sum(spans)) / max(1, len(spans))
    progress(f"e2e: {len(run_times)} jobs, {busy:.1f} s of run time in {wall:.1f} s wall")
    return {
        "slurm_e2e_efficiency": round(efficiency, 3),
        "slurm_e2e_assets": len(guids),
        "slurm_e2e_jobs": len(run_times),
        "slurm_e2e_executions": len(executions),
        "slurm_e2e_wall_s": round(wall, 1),
        "slurm_e2e_run_time_s_sum": round(busy, 1),
        "slurm_e2e_job_slots": slots,
        "slurm_e2e_job_sleep_s": E2E_SLEEP_S,
        "slurm_e2e_overhead_s_per_job": round(overhead, 2),
        "slurm_e2e_overhead_in_job_s": round(in_job, 2),
        "slurm_e2e_overhead_between_jobs_s": round(between, 2),
    }


async def slurm_cancel_names(env: Mapping[str, str], shared: Path) -> None:
    """Cancel whatever of this bench's e2e jobs is still pending or running."""
    transport = SshTransport(CLUSTER, ssh_target(env))
    try:
        queue = await transport.run(["squeue", "--noheader", "--format=%i %j"], timeout=60)
        ours = [line.split()[0] for line in queue.stdout.splitlines()
                if len(line.split()) == 2 and line.split()[1].startswith("dassco.sb-")]
        if ours:
            progress(f"e2e: cancelling {len(ours)} leftover jobs")
            await transport.run(["scancel", *ours], timeout=120)
    finally:
        await transport.close()


# ------------------------------------------------------------------------------ main


def skip_reason() -> str | None:
    env_file = CLUSTER_DIR / "cluster.env"
    if not env_file.exists():
        return f"no test cluster ({env_file} missing): run {SETUP} as root"
    if shutil.which("sinfo") is None:
        return "no test cluster: sinfo is not installed"
    ping = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                          timeout=30)
    if ping.returncode != 0 or not ping.stdout.strip():
        return f"test cluster not answering ({ping.stderr.strip()}): run {SETUP} again"
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} missing: the cluster user has no Python for jobs"
    return None


def shared_folder() -> Path:
    """Job state and work folders: written by the cluster user, so world-writable."""
    shared = Path(tempfile.mkdtemp(prefix="dasscod-bench-slurm-", dir="/tmp"))
    shared.chmod(0o777)
    return shared


async def main() -> dict[str, Any]:
    reason = skip_reason()
    if reason is not None:
        return {"skipped": reason}
    env = read_env(CLUSTER_DIR / "cluster.env")
    configure_logging("WARNING", "json")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dasscod-bench-cluster-") as tmp:
        root = Path(tmp)
        shared = shared_folder()
        try:
            with mongo_server(root / "mongo") as uri:
                held = await held_jobs_phase(env, uri, shared)
                e2e = await e2e_phase(env, uri, root, shared)
        finally:
            shutil.rmtree(shared, ignore_errors=True)
    return {
        **held,
        **e2e,
        "cluster": f"slurm over ssh {env['SSH_USER']}@{env['SSH_HOST']}:{env['SSH_PORT']}",
        "bench_s": round(time.monotonic() - started, 1),
    }


def run() -> None:
    print(json.dumps(anyio.run(main)))


if __name__ == "__main__":
    run()
