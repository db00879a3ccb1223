"""The local test cluster for the end-to-end Slurm tests.

One rule: with DASSCOD_TEST_CLUSTER=1 the session runs tests/infra/setup_cluster.sh first (it
is idempotent and takes well under a second when everything is up) and a failure there fails
the tests -- you asked for the cluster. Without it, the tests use the cluster described by
$DASSCOD_TEST_CLUSTER_DIR/cluster.env if it exists and answers, and are skipped otherwise,
with the reason printed (pytest -ra).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SETUP = Path(__file__).parents[1] / "infra" / "setup_cluster.sh"
#: setup_cluster.sh's "impossible on this machine" status.
SETUP_IMPOSSIBLE = 77


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
