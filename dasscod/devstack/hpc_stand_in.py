"""Stand-in HPC modules for the daemon's tests and benchmark: the orchestration without the
image processing of the real modules in `hpc/dassco_hpc/modules/`.

Jobs point at it with `DASSCO_HPC_MODULES=dasscod.devstack.hpc_stand_in` (the repository root on
PYTHONPATH). `MODULES` covers every job of HERB0001 and PIOF0001 (load, barcode, ocr,
derivatives, upload, clean_up); each returns plausible results for its job without touching
any file. Knobs, from the job's environment:

- `DASSCO_TEST_SLEEP_S`: seconds to sleep inside the module (a float; default 0).
- `DASSCO_TEST_FAIL_JOBS`: comma-separated `job` or `job:attempt` entries that raise a
  retryable `ModuleFailed`.
- `DASSCO_TEST_LOG`: a file to which each module execution appends one JSON line
  `{guid, job, attempt, pid, start, end, failed}` (O_APPEND, one write), so that tests can
  check that no job attempt ran twice.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from dassco_hpc import JobContext, ModuleFailed

Results = dict[str, Any]


def _sleep_s() -> float:
    raw = os.environ.get("DASSCO_TEST_SLEEP_S", "").strip()
    return max(0.0, float(raw)) if raw else 0.0


def _should_fail(ctx: JobContext) -> bool:
    entries = {e.strip() for e in os.environ.get("DASSCO_TEST_FAIL_JOBS", "").split(",")}
    return ctx.job in entries or f"{ctx.job}:{ctx.attempt}" in entries


def _record(ctx: JobContext, start: float, end: float, failed: bool) -> None:
    path = os.environ.get("DASSCO_TEST_LOG", "").strip()
    if not path:
        return
    line = json.dumps(
        {
            "guid": ctx.guid,
            "job": ctx.job,
            "attempt": ctx.attempt,
            "pid": os.getpid(),
            "start": start,
            "end": end,
            "failed": failed,
        }
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def _module(results: Callable[[JobContext], Results]) -> Callable[[JobContext], Results]:
    def run(ctx: JobContext) -> Results:
        start = time.time()
        failed = True
        try:
            sleep = _sleep_s()
            if sleep:
                time.sleep(sleep)
            if _should_fail(ctx):
                raise ModuleFailed(
                    f"test failure requested for {ctx.job} attempt {ctx.attempt}",
                    retryable=True,
                )
            out = results(ctx)
            failed = False
            return out
        finally:
            # Also when the job is terminated mid-sleep: the execution happened.
            _record(ctx, start, time.time(), failed)

    return run


def barcodes_for(guid: str) -> list[str]:
    """The barcodes the stand-in reader 'finds' on an asset: derived from its guid."""
    return [f"BC-{guid}"]


MODULES: dict[str, Callable[[JobContext], Results]] = {
    "load": _module(lambda ctx: {"asset_ready": True}),
    "barcode": _module(
        lambda ctx: {
            "barcode": {
                "barcodes": barcodes_for(ctx.guid),
                "asset_subject": "specimen",
                "MSO": False,
                "MOS": False,
                "label": False,
                "disposable": None,
            }
        }
    ),
    "ocr": _module(lambda ctx: {"metadata": {"tags": {"ocr": f"Test OCR text of {ctx.guid}"}}}),
    "derivatives": _module(lambda ctx: {"derivatives": []}),
    "upload": _module(lambda ctx: {}),
    "clean_up": _module(lambda ctx: {"clean_up": True}),
}
