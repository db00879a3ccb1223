"""`make demo` as a test, with a smaller batch: the table it prints is what a user reads."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from dasscod.devstack.stack import REPO_ROOT

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(shutil.which("tesseract") is None,
                    reason="tesseract is not installed (tests/infra/install_packages.sh)")
def test_demo_takes_a_small_batch_through_herb0001() -> None:
    env = {**os.environ, "DEMO_ASSETS": "5", "DEMO_TIMEOUT_S": "240"}
    env.pop("DASSCOD_CONFIG", None)
    run = subprocess.run(
        [sys.executable, "-m", "dasscod.devstack.demo"],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300, check=False,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr[-3000:]
    lines = list(re.finditer(
        r"^demo-\d\d-(?P<kind>[a-z-]+)-\w{4}\s+(?P<type>\w+)\s+(?P<barcodes>\S+)\s+"
        r"(?P<ocr>.*?)\s+(?P<derivatives>\d+)\s+(?P<ars>\w+)\s+(?P<status>\w+)\s*$",
        out, re.MULTILINE))
    assert len(lines) == 5, out
    rows = {m["kind"]: m for m in lines}
    assert set(rows) == {"mos-specimen", "mos-label", "target", "colour-checker", "specimen"}, out
    # A target with its printed code and one without: both found, both stop after the barcode.
    for target, how in (("target", "printed code"), ("colour-checker", "recognised")):
        assert rows[target]["type"] == "DEVICE_TARGET" and rows[target]["derivatives"] == "0"
        assert rows[target]["ocr"].startswith(f"target: {how}"), out
    assert rows["mos-label"]["type"] == "LABEL"
    # The label learns its specimen's barcode through the MOS link.
    assert rows["mos-label"]["barcodes"] == rows["mos-specimen"]["barcodes"] == "NHMD-100007"
    assert rows["specimen"]["barcodes"].startswith("NHMD-")
    # The label's first words, their mean confidence and number (the demo itself checks that
    # most of the label's words were read).
    assert re.fullmatch(r"[A-Z]{3,}.* \d\d\.\d +\d\d", rows["specimen"]["ocr"]), out
    assert int(rows["specimen"]["derivatives"]) >= 1
    assert all(r["status"] == "DONE" for r in rows.values())
    # Every original went through ARS into ERDA (the demo checks this in ARS itself).
    assert all(r["ars"] == "ERDA" for r in lines), out
    derivatives = re.search(r"^derivatives: (\d+) registered, (\d+) created in ARS under their "
                            r"parent, (\d+) with their file in ARS, (\d+) in ERDA", out,
                            re.MULTILINE)
    assert derivatives is not None, out
    registered, created, with_file, in_erda = (int(g) for g in derivatives.groups())
    # Each derivative's file went cluster -> daemon -> ARS -> ERDA.
    assert registered == created == with_file == in_erda == sum(int(r["derivatives"])
                                                                 for r in lines)
    assert "all assets reached their expected end state" in out
    # It cleans up after itself: no daemon, job or ARS simulator left running.
    for pattern in ("dasscod-demo-", "dasscod.devstack.ars"):
        leftover = subprocess.run(["pgrep", "-f", pattern], capture_output=True, check=False)
        assert leftover.stdout == b"", f"processes from the demo are still running: {pattern}"
