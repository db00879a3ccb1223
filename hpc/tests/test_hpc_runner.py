"""`dassco-hpc run` end to end, as a subprocess talking to the stub listener over HTTP."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from listener_stub import StubListener

TOKEN = "test-token"
GUID = "asset-1"
REPO_ROOT = Path(__file__).resolve().parents[2]

JOB_MODULES = """
import json
import os
import time

from dassco_hpc import ModuleFailed


def ok(ctx):
    time.sleep(float(os.environ.get("JOBMODS_SLEEP_S", "0")))
    seen = {
        "cwd": os.getcwd(),
        "guid": ctx.guid,
        "job": ctx.job,
        "attempt": ctx.attempt,
        "workdir": str(ctx.workdir),
        "asset_files": None if ctx.asset_files is None else str(ctx.asset_files),
        "hpc_job_id": ctx.hpc_job_id,
    }
    (ctx.workdir / "seen.json").write_text(json.dumps(seen))
    ctx.log("hello from ok")
    return {"asset_ready": True, "metadata": {"ocr_text": "Flora Danica"}}


def gives_up(ctx):
    raise ModuleFailed("image unreadable", retryable=False)


def flaky(ctx):
    raise ModuleFailed("scratch disk busy")


def crashes(ctx):
    return 1 / 0


def hangs(ctx):
    ctx.client.post("/test/in-module", {})  # a module may call the listener
    print("sleeping", flush=True)  # tells the test that the module is about to sleep
    time.sleep(60)
    return {}


def bad_results(ctx):
    return {"colour": "blue"}


MODULES = {
    "ok": ok,
    "gives_up": gives_up,
    "flaky": flaky,
    "crashes": crashes,
    "hangs": hangs,
    "bad_results": bad_results,
}
"""


@pytest.fixture
def modules_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "jobmods.py").write_text(textwrap.dedent(JOB_MODULES))
    return folder


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "work" / "nested" / GUID  # does not exist yet


@pytest.fixture
def env(stub: StubListener, modules_dir: Path, workdir: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(modules_dir),
        "DASSCO_CALLBACK_URL": stub.base_url,
        "DASSCO_TOKEN": TOKEN,
        "DASSCO_ASSET_GUID": GUID,
        "DASSCO_JOB": "ocr",
        "DASSCO_ATTEMPT": "2",
        "DASSCO_WORKDIR": str(workdir),
        "DASSCO_HPC_MODULES": "jobmods",
        "DASSCO_CALLBACK_DEADLINE_S": "20",
        "DASSCO_CALLBACK_TIMEOUT_S": "5",
        "DASSCO_CALLBACK_BACKOFF_S": "0.01",
        "DASSCO_CALLBACK_BACKOFF_MAX_S": "0.05",
    }


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dassco_hpc", *args]


def run(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def only(stub: StubListener, path: str) -> dict[str, Any]:
    [request] = stub.to(path)
    assert request.authorization == f"Bearer {TOKEN}"
    body: dict[str, Any] = request.body
    return body


def test_started_then_finished_with_results(
    stub: StubListener, env: dict[str, str], workdir: Path, tmp_path: Path
) -> None:
    env.update(
        JOBMODS_SLEEP_S="0.3", SLURM_JOB_ID="4242", DASSCO_ASSET_FILES=str(tmp_path / "files")
    )
    done = run(env, "run", "ok", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [r.path for r in stub.requests] == ["/jobs/started", "/jobs/finished"]
    started = only(stub, "/jobs/started")
    assert started["asset_guid"] == GUID
    assert started["job"] == "ocr"
    assert started["attempt"] == 2
    assert started["hpc_job_id"] == "4242"
    assert "timestamp" in started
    finished = only(stub, "/jobs/finished")
    assert (finished["asset_guid"], finished["job"], finished["attempt"]) == (GUID, "ocr", 2)
    assert finished["results"] == {
        "asset_ready": True,
        "metadata": {"ocr_text": "Flora Danica"},
        "barcode": None,
        "clean_up": False,
        "derivatives": [],
    }
    assert 0.3 <= finished["run_time_s"] < 5
    seen = json.loads((workdir / "seen.json").read_text())
    assert seen == {
        "cwd": str(workdir),
        "guid": GUID,
        "job": "ocr",
        "attempt": 2,
        "workdir": str(workdir),
        "asset_files": str(tmp_path / "files"),
        "hpc_job_id": "4242",
    }
    assert "hello from ok" in done.stderr
    assert TOKEN not in done.stderr + done.stdout


def test_the_console_script(stub: StubListener, env: dict[str, str]) -> None:
    script = Path(sys.executable).parent / "dassco-hpc"
    if not script.exists():
        pytest.skip("dassco-hpc is not installed next to this Python")
    done = subprocess.run(
        [str(script), "run", "ok"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert [r.path for r in stub.requests] == ["/jobs/started", "/jobs/finished"]


@pytest.mark.parametrize(
    ("module", "reason", "retryable"),
    [
        ("gives_up", "image unreadable", False),
        ("flaky", "scratch disk busy", True),
        ("crashes", "ZeroDivisionError: division by zero", True),
        (
            "bad_results",
            "module bad_results returned invalid results: unknown result fields: colour",
            False,
        ),
    ],
)
def test_module_failures_are_reported(
    stub: StubListener, env: dict[str, str], module: str, reason: str, retryable: bool
) -> None:
    done = run(env, "run", module)
    assert done.returncode == 1, done.stderr
    assert [r.path for r in stub.requests] == ["/jobs/started", "/jobs/failed"]
    failed = only(stub, "/jobs/failed")
    assert failed["reason"].startswith(reason)
    assert failed["retryable"] is retryable
    assert failed["exit_code"] == 1
    assert failed["run_time_s"] >= 0
    if module == "crashes":
        assert "Traceback" in failed["exception"]
        assert "return 1 / 0" in failed["exception"]


def test_an_unknown_module_is_reported_and_exits_78(
    stub: StubListener, env: dict[str, str]
) -> None:
    done = run(env, "run", "nope")
    assert done.returncode == 78, done.stderr
    failed = only(stub, "/jobs/failed")
    assert failed["retryable"] is False
    assert failed["exit_code"] == 78
    assert "'nope'" in failed["reason"]
    assert "jobmods.MODULES" in failed["reason"]
    assert "dassco_hpc.modules.nope" in failed["reason"]


def test_without_listed_modules_the_builtin_package_is_looked_in(
    stub: StubListener, env: dict[str, str]
) -> None:
    del env["DASSCO_HPC_MODULES"]
    done = run(env, "run", "ok")
    assert done.returncode == 78, done.stderr
    assert "dassco_hpc.modules.ok" in only(stub, "/jobs/failed")["reason"]


def test_a_listed_module_that_does_not_import_is_a_config_error(
    stub: StubListener, env: dict[str, str]
) -> None:
    env["DASSCO_HPC_MODULES"] = "no_such_module_here,jobmods"
    done = run(env, "run", "ok")
    assert done.returncode == 78, done.stderr
    failed = only(stub, "/jobs/failed")
    assert "no_such_module_here" in failed["reason"]
    assert failed["retryable"] is False


@pytest.mark.parametrize(
    "variable",
    [
        "DASSCO_CALLBACK_URL",
        "DASSCO_TOKEN",
        "DASSCO_ASSET_GUID",
        "DASSCO_JOB",
        "DASSCO_ATTEMPT",
        "DASSCO_WORKDIR",
    ],
)
def test_a_missing_variable_exits_78_naming_it(
    stub: StubListener, env: dict[str, str], variable: str
) -> None:
    del env[variable]
    done = run(env, "run", "ok")
    assert done.returncode == 78
    assert variable in done.stderr
    assert stub.requests == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DASSCO_ATTEMPT", "zero"),
        ("DASSCO_ATTEMPT", "0"),
        ("DASSCO_CALLBACK_URL", "ftp://x"),
        ("DASSCO_CALLBACK_DEADLINE_S", "soon"),
    ],
)
def test_a_bad_variable_exits_78_naming_it(
    stub: StubListener, env: dict[str, str], variable: str, value: str
) -> None:
    env[variable] = value
    done = run(env, "run", "ok")
    assert done.returncode == 78
    assert variable in done.stderr
    assert stub.requests == []


def test_sigterm_during_the_module_reports_a_retryable_failure(
    stub: StubListener, env: dict[str, str]
) -> None:
    proc = subprocess.Popen(
        command("run", "hangs"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "the module did not start"
        assert proc.stdout.readline() == "sleeping\n"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    failed = only(stub, "/jobs/failed")
    assert failed["reason"] == "terminated by signal"
    assert failed["retryable"] is True
    assert failed["exit_code"] == 143
    assert failed["run_time_s"] > 0
    assert "SIGTERM" in failed["exception"]
    assert ", in hangs\n" in failed["exception"], "where the module was stopped"
    assert [r.path for r in stub.requests] == ["/jobs/started", "/test/in-module", "/jobs/failed"]


def test_sigterm_while_started_is_retried_reports_the_failure(
    stub: StubListener, env: dict[str, str]
) -> None:
    stub.answer("/jobs/started", 503, times=None)
    proc = subprocess.Popen(
        command("run", "ok"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stub.wait_for(lambda rs: len(rs) >= 2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    failed = only(stub, "/jobs/failed")
    assert failed["reason"] == "terminated by signal"
    assert failed["run_time_s"] is None


def test_an_undelivered_callback_is_saved_and_replayed(
    stub: StubListener, env: dict[str, str], workdir: Path, tmp_path: Path
) -> None:
    stub.answer("/jobs/finished", 503, times=None)
    env["DASSCO_CALLBACK_DEADLINE_S"] = "0.5"
    done = run(env, "run", "ok")
    assert done.returncode == 75, done.stderr
    saved_file = workdir / ".undelivered.jsonl"
    text = saved_file.read_text()
    assert TOKEN not in text
    assert TOKEN not in done.stderr
    [saved] = [json.loads(line) for line in text.splitlines()]
    assert saved["method"] == "POST"
    assert saved["path"] == "/jobs/finished"
    assert saved["url"] == stub.base_url
    assert saved["body"]["results"]["asset_ready"] is True
    attempts = len(stub.to("/jobs/finished"))
    assert attempts > 1

    # The listener is back: replay with the token from a file and the saved URL.
    stub.clear_rules()
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    replayed = run({"PATH": env["PATH"]}, "replay", str(workdir), "--token-file", str(token_file))
    assert replayed.returncode == 0, replayed.stderr
    assert not saved_file.exists()
    finished = stub.to("/jobs/finished")
    assert len(finished) == attempts + 1
    assert finished[-1].body == saved["body"]
    assert finished[-1].authorization == f"Bearer {TOKEN}"

    # Nothing left: a second replay (token and work folder from the environment) is a no-op.
    again = run(
        {"PATH": env["PATH"], "DASSCO_TOKEN": TOKEN, "DASSCO_WORKDIR": str(workdir)}, "replay"
    )
    assert again.returncode == 0, again.stderr
    assert len(stub.to("/jobs/finished")) == attempts + 1


def test_replay_needs_a_token(tmp_path: Path) -> None:
    done = run({"PATH": os.environ.get("PATH", "")}, "replay", str(tmp_path))
    assert done.returncode == 78
    assert "DASSCO_TOKEN" in done.stderr


@pytest.mark.parametrize(("status", "code"), [(401, 77), (403, 77), (404, 69), (422, 69)])
def test_a_refused_started_exits_without_running_the_module(
    stub: StubListener, env: dict[str, str], workdir: Path, status: int, code: int
) -> None:
    stub.answer("/jobs/started", status, body={"detail": "no"})
    done = run(env, "run", "ok")
    assert done.returncode == code, done.stderr
    assert [r.path for r in stub.requests] == ["/jobs/started"]
    assert not (workdir / "seen.json").exists()


def test_a_wrong_token_exits_77(stub: StubListener, env: dict[str, str]) -> None:
    env["DASSCO_TOKEN"] = "stale-token"
    done = run(env, "run", "ok")
    assert done.returncode == 77, done.stderr
    assert "stale-token" not in done.stderr
    assert len(stub.requests) == 1


def test_refused_results_are_reported_as_a_failure(stub: StubListener, env: dict[str, str]) -> None:
    stub.answer("/jobs/finished", 422, body={"detail": "results.barcode: field required"})
    done = run(env, "run", "ok")
    assert done.returncode == 69, done.stderr
    assert [r.path for r in stub.requests] == ["/jobs/started", "/jobs/finished", "/jobs/failed"]
    failed = only(stub, "/jobs/failed")
    assert failed["retryable"] is False
    assert "results.barcode: field required" in failed["reason"]


def test_a_listener_outage_during_the_module_loses_nothing(
    stub: StubListener, env: dict[str, str]
) -> None:
    # Every callback first meets a 503, a dropped connection and a 502.
    for path in ("/jobs/started", "/jobs/finished"):
        stub.answer(path, 503, headers={"Retry-After": "0"})
        stub.drop(path)
        stub.answer(path, 502)
    done = run(env, "run", "ok")
    assert done.returncode == 0, done.stderr
    assert len(stub.to("/jobs/started")) == 4
    assert len(stub.to("/jobs/finished")) == 4
    assert done.stderr.count("retry") == 6


def test_the_daemons_test_module(stub: StubListener, env: dict[str, str], tmp_path: Path) -> None:
    if not (REPO_ROOT / "dasscod" / "devstack" / "hpc_stand_in.py").exists():
        pytest.skip("not in the dasscod repository")
    runs = tmp_path / "runs.jsonl"
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        DASSCO_HPC_MODULES="dasscod.devstack.hpc_stand_in",
        DASSCO_TEST_LOG=str(runs),
        DASSCO_JOB="barcode",
        DASSCO_TEST_FAIL_JOBS="ocr,barcode:1",
        DASSCO_TEST_SLEEP_S="0.05",
    )
    done = run(env, "run", "barcode")  # attempt 2: not asked to fail
    assert done.returncode == 0, done.stderr
    results = only(stub, "/jobs/finished")["results"]
    assert results["barcode"]["barcodes"] == [f"BC-{GUID}"]
    assert results["barcode"]["asset_subject"] == "specimen"
    env["DASSCO_ATTEMPT"] = "1"
    failed = run(env, "run", "barcode")
    assert failed.returncode == 1, failed.stderr
    assert only(stub, "/jobs/failed")["retryable"] is True
    lines = [json.loads(line) for line in runs.read_text().splitlines()]
    assert [(r["guid"], r["job"], r["attempt"], r["failed"]) for r in lines] == [
        (GUID, "barcode", 2, False),
        (GUID, "barcode", 1, True),
    ]
    assert all(r["end"] - r["start"] >= 0.05 and r["pid"] > 0 for r in lines)


def test_sigterm_while_finished_is_retried_still_delivers_the_results(
    stub: StubListener, env: dict[str, str]
) -> None:
    stub.answer("/jobs/finished", 503, times=None)
    proc = subprocess.Popen(
        command("run", "ok"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stub.wait_for(lambda rs: sum(r.path == "/jobs/finished" for r in rs) >= 2)
        stub.clear_rules()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    assert stub.to("/jobs/failed") == [], "the module's results are known: no failure"
    assert stub.to("/jobs/finished")[-1].body["results"]["asset_ready"] is True
