"""What the daemon's wheel ships: the daemon with its programs and pipelines, and not the dev
stack (demo, benchmark, simulators)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_the_daemon_and_not_the_dev_stack(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("dasscod-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [n for n in names if n.startswith("dasscod/devstack/")]
    assert not [n for n in names if n.startswith("tests/")]
    for shipped in (
        "dasscod/daemon.py",
        "dasscod/cluster/direct/wrapper.sh",
        "dasscod/cluster/direct/launch.sh",
        "dasscod/cluster/direct/warm_server.py",
        "dasscod/pipelines/PIPEHERB0001.toml",
        "dasscod/pipelines/PIPEPIOF0001.toml",
    ):
        assert shipped in names, f"{shipped} missing from {wheel.name}"
