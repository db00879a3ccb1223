"""The example unit is valid for systemd and sandboxed: `systemd-analyze verify` accepts it and
its exposure score stays at most 2.0 (systemd's scale: 0 safe ... 10 exposed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[2] / "systemd" / "dasscod.service"
INSTALLED_AT = "/opt/dasscod/venv/bin/dasscod"
MAX_EXPOSURE = 2.0

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed "
                                       "(tests/infra/install_packages.sh installs it)")


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The unit with its commands pointing at this checkout's `dasscod` (verify checks that
    they exist and are executable)."""
    here = Path(sys.executable).parent / "dasscod"
    assert here.exists(), here
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text(encoding="utf-8").replace(INSTALLED_AT, str(here)),
                    encoding="utf-8")
    return copy


def test_systemd_accepts_the_unit(unit: Path) -> None:
    result = analyze("verify", str(unit))
    assert result.returncode == 0, result.stderr
    assert "dasscod.service" not in result.stderr, result.stderr


def test_the_unit_is_sandboxed_to_an_exposure_of_at_most_two(unit: Path) -> None:
    result = analyze("security", "--offline=true", str(unit))
    assert result.returncode == 0, result.stderr
    score = re.search(r"Overall exposure level for dasscod\.service: (\d+\.\d)", result.stdout)
    assert score is not None, result.stdout
    assert float(score.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("line", [
    "ProtectSystem=strict", "StateDirectory=dasscod", "PrivateTmp=true", "CapabilityBoundingSet=",
    "UMask=0077", "NoNewPrivileges=true",
])
def test_the_unit_keeps_the_options_the_issue_names(line: str) -> None:
    assert line in UNIT.read_text(encoding="utf-8").splitlines()


def test_the_unit_gives_secrets_as_credentials_and_bounds_what_it_may_do() -> None:
    lines = UNIT.read_text(encoding="utf-8").splitlines()
    for prefix in ("SystemCallFilter=", "RestrictAddressFamilies=", "LimitNOFILE=",
                   "ReadWritePaths=", "LoadCredential="):
        assert any(x.startswith(prefix) for x in lines), prefix
    assert not any(x.startswith("EnvironmentFile=") for x in lines)
