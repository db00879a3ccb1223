"""What the job-environment tests share: a daemon environment full of secrets, a job spec built
the way the daemon builds it, and the check that nothing of the daemon's reached a job."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from dasscod.cluster.base import JobInfo, JobSpec, Scheduler
from dasscod.cluster.configured import Cluster
from dasscod.pipeline import Event, JobEvent
from dasscod.pipelines import load_pipelines
from dasscod.services.launch import Launcher
from dasscod.settings import load_settings
from dasscod.store import Stores
from tests.conftest import make_track

TOKEN_SECRET = "daemon-token-secret-0123456789abcdefXYZ"
MONGO_PASSWORD = "mongo-Pw-0b1c2d3e"
INTAKE_TOKEN = "intake-token-0123456789abcdefXYZ"
CONTROL_TOKEN = "control-token-0123456789abcdefXYZ"
#: Not a setting: a variable only the daemon has (a job must not get it either).
DAEMON_ONLY = ("DAEMON_ONLY_MARKER", "only-the-daemon-has-this-4f5e6d")
#: The configured secrets: none may appear in a job's environment, script or folders.
SECRETS = (TOKEN_SECRET, MONGO_PASSWORD, INTAKE_TOKEN, CONTROL_TOKEN, DAEMON_ONLY[1])
#: A variable of the cluster's `env`, which every job gets.
CLUSTER_VARIABLE = ("DASSCO_SITE_SCRATCH", "/scratch/dassco")


def daemon_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's environment as an operator might set it: every secret a DASSCOD_*
    variable. Loading the settings from it proves these are the configured secrets."""
    monkeypatch.setenv("DASSCOD_SECURITY__TOKEN_SECRET", TOKEN_SECRET)
    monkeypatch.setenv("DASSCOD_MONGO__URI", f"mongodb://dasscod:{MONGO_PASSWORD}@db/")
    monkeypatch.setenv("DASSCOD_INTAKE__API_TOKEN", INTAKE_TOKEN)
    monkeypatch.setenv("DASSCOD_CONTROL__TOKENS", json.dumps({"alice": CONTROL_TOKEN}))
    monkeypatch.setenv(*DAEMON_ONLY)
    monkeypatch.delenv("DASSCOD_CONFIG", raising=False)
    settings = load_settings()
    assert settings.security.secret() == TOKEN_SECRET
    assert MONGO_PASSWORD in settings.mongo.uri.get_secret_value()
    assert settings.control.named() == {"alice": CONTROL_TOKEN}


async def daemon_job_spec(stores: Stores, cluster: Cluster, guid: str,
                          *argv: str) -> JobSpec:
    """The spec the daemon's launcher builds for the first job of an asset on `cluster`
    (cluster env, the runner's DASSCO_* variables, a real token), running `argv` instead of
    the pipeline's module."""
    pipelines = load_pipelines()
    track = make_track(guid)
    first = track.job_list[0].name
    await stores.track.insert(track)
    await stores.track.apply(guid, [JobEvent(first, Event.CLAIM, cluster=cluster.name)],
                             cause="test")
    claimed = await stores.track.get(guid)
    assert claimed is not None
    launcher = Launcher(stores=stores, clusters={cluster.name: cluster}, pipelines=pipelines,
                        callback_base="http://127.0.0.1:9/api/v1", token_secret=TOKEN_SECRET,
                        token_ttl_s=600)
    spec = launcher.job_spec(claimed, first)
    assert spec.env["DASSCO_TOKEN"] and spec.env[CLUSTER_VARIABLE[0]] == CLUSTER_VARIABLE[1]
    return replace(spec, argv=argv, time_limit_s=120)


def assert_nothing_of_the_daemon(dumped_env: dict[str, str], *folders: Path) -> None:
    """The job's environment has the basics, the cluster's env and the runner's variables,
    and no DASSCOD_* name or secret value is in it or in any file under `folders` (its
    script, its state folder, its work folder)."""
    assert dumped_env[CLUSTER_VARIABLE[0]] == CLUSTER_VARIABLE[1]
    assert dumped_env["DASSCO_TOKEN"]
    assert dumped_env["PATH"] == os.environ["PATH"]
    assert DAEMON_ONLY[0] not in dumped_env
    assert not [name for name in dumped_env if name.startswith("DASSCOD")]
    texts = {"environment": "\n".join(f"{k}={v}" for k, v in dumped_env.items())}
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
    assert len(texts) > 2, texts.keys()
    leaks = [(where, secret) for where, text in texts.items()
             for secret in (*SECRETS, "DASSCOD_") if secret in text]
    assert leaks == []


async def until_finished(scheduler: Scheduler, job_id: str, name: str,
                         within_s: float) -> JobInfo:
    """Polls: the scheduler has no event to wait for."""
    with anyio.fail_after(within_s):
        while True:
            info = (await scheduler.status({job_id: name}))[job_id]
            if info.state.finished:
                return info
            await anyio.sleep(0.1)
