"""One file-name rule for intake, the intake API, the listener and the cluster's `load`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dassco_hpc import filenames as hpc_rule

from dasscod import filenames as daemon_rule

ROOT = Path(__file__).resolve().parents[2]

GOOD = ["a", "asset-1.tif", "A_b.C-d.JPEG", "0" * 200, "x..y", "1.", "sheet_001.tiff"]
BAD = [
    "", ".hidden", "..", ".", "-dash-first", "_under", "a/b", "a\\b", "../x", "with space.tif",
    "tab\tname", "æble.tif", "a\x00b", "new\nline", "0" * 201, "a:b", "a*b", "quote'd",
]


def test_the_daemon_and_the_cluster_package_carry_the_same_rule():
    # hpc/ may not import the daemon, so the rule is mirrored; a change to one copy must be
    # made to both.
    daemon = (ROOT / "dasscod" / "filenames.py").read_bytes()
    cluster = (ROOT / "hpc" / "dassco_hpc" / "filenames.py").read_bytes()
    assert daemon == cluster


@pytest.mark.parametrize("rule", [daemon_rule, hpc_rule], ids=["daemon", "hpc"])
@pytest.mark.parametrize("name", GOOD)
def test_good_names_pass(rule, name: str):
    assert rule.file_name_problem(name) is None
    assert re.fullmatch(rule.FILE_NAME_PATTERN, name)


@pytest.mark.parametrize("rule", [daemon_rule, hpc_rule], ids=["daemon", "hpc"])
@pytest.mark.parametrize("name", BAD)
def test_bad_names_fail_with_a_reason_and_the_pattern_agrees(rule, name: str):
    problem = rule.file_name_problem(name)
    assert problem
    assert not rule.is_file_name(name)
    assert not re.fullmatch(rule.FILE_NAME_PATTERN, name)


def test_the_longest_name_leaves_room_for_temporary_names():
    longest = "a" * daemon_rule.MAX_LENGTH
    assert len(f".{longest}.download".encode()) <= 255
