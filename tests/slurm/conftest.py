"""The local test cluster for the end-to-end Slurm tests.

One rule: with DASSCOD_TEST_CLUSTER=1 the session runs tests/infra/setup_cluster.sh first (it
is idempotent and takes well under a second when everything is up) and a failure there fails
the tests -- you asked for the cluster. Without it, the tests use the cluster described by
$DASSCOD_TEST_CLUSTER_DIR/cluster.env if it exists and answers, and are skipped otherwise,
with the reason printed (pytest -ra).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
SETUP = REPO / "tests" / "infra" / "setup_cluster.sh"
#: setup_cluster.sh's "impossible on this machine" status.
SETUP_IMPOSSIBLE = 77
#: The cluster's own Python (setup_cluster.sh installs it), which the runner's venv is made from.
CLUSTER_PYTHON = Path("/usr/bin/python3")
#: What the jobs import (source in the checkout -> name in the runner's site-packages): the
#: runner, and the test module the end-to-end tests run in place of the image modules.
RUNNER_SOURCES = {
    REPO / "hpc" / "dassco_hpc": "dassco_hpc",
    REPO / "dasscod" / "devstack" / "hpc_stand_in.py": "dasscod/devstack/hpc_stand_in.py",
}


@dataclass(frozen=True)
class LocalCluster:
    env: dict[str, str]

    @property
    def partition(self) -> str:
        return self.env["SLURM_PARTITION"]


def _read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture(scope="session")
def slurm_cluster() -> LocalCluster:
    state = Path(os.environ.get("DASSCOD_TEST_CLUSTER_DIR", "/var/lib/dasscod-test-cluster"))
    if os.environ.get("DASSCOD_TEST_CLUSTER") == "1":
        done = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=900)
        if done.returncode == SETUP_IMPOSSIBLE:
            pytest.skip(f"test cluster impossible here: {done.stderr.strip()}")
        if done.returncode != 0:
            pytest.fail(f"{SETUP} failed:\n{done.stdout}{done.stderr}")
    env_file = state / "cluster.env"
    if not env_file.exists():
        pytest.skip(f"no test cluster ({env_file} missing): run {SETUP} as root, "
                    "or set DASSCOD_TEST_CLUSTER=1")
    if shutil.which("sinfo") is None:
        pytest.skip("no test cluster: sinfo is not installed")
    ping = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                          timeout=30)
    if ping.returncode != 0 or not ping.stdout.strip():
        pytest.skip(f"test cluster set up but not answering ({ping.stderr.strip()}): "
                    f"run {SETUP} again")
    return LocalCluster(_read_env(env_file))


@pytest.fixture(scope="session")
def cluster_python(slurm_cluster: LocalCluster) -> str:
    """The Python that runs jobs on the test cluster: a venv on the cluster's disk with the job
    runner installed in it, as a real cluster has it. Never the checkout itself, which the
    cluster user may not be able to read (a clone under a 0700 home or `mktemp -d`). One venv
    per content of the sources, shared by concurrent test sessions and made atomically."""
    if not CLUSTER_PYTHON.exists():
        pytest.skip(f"{CLUSTER_PYTHON} missing: the cluster has no Python for jobs (run {SETUP})")
    digest = hashlib.sha256()
    for source in sorted(RUNNER_SOURCES):
        for path in sorted(source.rglob("*.py")) if source.is_dir() else [source]:
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    state = Path(slurm_cluster.env.get("DASSCOD_TEST_CLUSTER_DIR", ""))
    root = (state if state.is_dir() and os.access(state, os.W_OK)
            else Path(tempfile.gettempdir())) / "dasscod-runners"
    root.mkdir(mode=0o755, exist_ok=True)
    final = root / digest.hexdigest()[:16]
    if not (final / "ready").exists():
        _make_runner(root, final)
    _prune_runners(root, keep=final)
    return str(final / "bin" / "python")


#: Runners of other source versions are removed once unused this long (a session running
#: now uses its own, made or touched at its start).
RUNNER_MAX_AGE_S = 2 * 86400


def _prune_runners(root: Path, keep: Path) -> None:
    (keep / "ready").touch()
    cutoff = time.time() - RUNNER_MAX_AGE_S
    for runner in root.iterdir():
        ready = runner / "ready"
        if runner != keep and ready.exists() and ready.stat().st_mtime < cutoff:
            shutil.rmtree(runner, ignore_errors=True)


def _make_runner(root: Path, final: Path) -> None:
    building = root / f".{final.name}.{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run([str(CLUSTER_PYTHON), "-m", "venv", "--without-pip", str(building)],
                       check=True, capture_output=True, timeout=120)
        purelib = subprocess.run(
            [str(building / "bin" / "python"), "-c",
             "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip()
        for source, name in RUNNER_SOURCES.items():
            target = Path(purelib) / name
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                (target.parent / "__init__.py").touch()
                shutil.copy(source, target)
        for top, _, files in os.walk(building):  # readable by the cluster user
            folder = Path(top)
            folder.chmod(0o755)
            for path in (folder / name for name in files):
                if not path.is_symlink():
                    path.chmod(0o755 if os.access(path, os.X_OK) else 0o644)
        (building / "ready").touch(mode=0o644)
        try:
            building.rename(final)
        except OSError:
            if not (final / "ready").exists():  # not another session's finished copy
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder the cluster user can write (jobs run as that user over SSH): job state, work
    folders, the test module's log."""
    folder = Path(tempfile.mkdtemp(prefix="dasscod-cluster-test-", dir="/tmp"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
