"""The built-in modules through `dassco-hpc run`, as the daemon starts them: load, barcode
and clean_up on one synthetic sheet, reported to the stub listener."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from listener_stub import StubListener
from module_fixtures import GUID, TOKEN, link_for


def test_load_barcode_clean_up_as_jobs(
    stub: StubListener, tmp_path: Path, sheets: dict[str, Path]
) -> None:
    stub.gets[f"/assets/{GUID}/links"] = {"asset_guid": GUID, "files": [link_for(sheets["mso"])]}
    workdir = tmp_path / "work" / GUID
    for attempt, job in enumerate(("load", "barcode", "clean_up"), start=1):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DASSCO_CALLBACK_URL": stub.base_url,
            "DASSCO_TOKEN": TOKEN,
            "DASSCO_ASSET_GUID": GUID,
            "DASSCO_JOB": job,
            "DASSCO_ATTEMPT": str(attempt),
            "DASSCO_WORKDIR": str(workdir),
            "DASSCO_CALLBACK_DEADLINE_S": "10",
        }
        done = subprocess.run(
            [sys.executable, "-m", "dassco_hpc", "run", job],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    results = [r.body["results"] for r in stub.to("/jobs/finished")]
    assert [r["asset_ready"] for r in results] == [True, False, False]
    assert results[1]["barcode"]["barcodes"] == ["NHMD-100007", "NHMD-600007"]
    assert results[1]["barcode"]["MSO"] is True
    assert results[2]["clean_up"] is True
    assert list(workdir.iterdir()) == []
