"""Start and stop tell the truth: SIGHUP reloads what may change and refuses the rest, an
unexpected stop exits non-zero."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import anyio
import httpx
import psutil
import pytest

from dasscod.cluster.direct.warm import WARM_NAME
from dasscod.devstack.stack import LocalStack, stop_daemon

pytestmark = pytest.mark.e2e


def log_events(path: Path) -> list[dict[str, object]]:
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


async def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=1) as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the daemon exited"
            try:
                if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await anyio.sleep(0.1)
    pytest.fail("the daemon did not become ready")


async def wait_event(path: Path, event: str, timeout_s: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for e in log_events(path):
            if e.get("event") == event:
                return e
        await anyio.sleep(0.1)
    pytest.fail(f"no {event!r} in the daemon's log")


async def test_the_warm_launcher_starts_with_the_daemon_before_any_job(
    tmp_path: Path, mongo_uri: str
) -> None:
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"warm_{time.time_ns()}")
    stack.write_config()
    proc = stack.start_daemon()
    try:
        await wait_ready(stack.port, proc)
        started = await wait_event(stack.root / "daemon.log", "warm launcher started")
        launcher = psutil.Process(int(str(started["pid"])))
        assert WARM_NAME in launcher.cmdline()
        assert launcher.ppid() == proc.pid
    finally:
        status = stop_daemon(proc)
    assert status == 0
    assert not psutil.pid_exists(launcher.pid) or launcher.status() == psutil.STATUS_ZOMBIE


async def test_sighup_applies_limits_and_log_level_and_refuses_the_rest(
    tmp_path: Path, mongo_uri: str
) -> None:
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"hup_{time.time_ns()}")
    stack.write_config()
    proc = stack.start_daemon()
    log = stack.root / "daemon.log"
    try:
        await wait_ready(stack.port, proc)
        stack.max_jobs, stack.assets_in_flight, stack.watch_s = 2, 7, 3.0
        stack.write_config()
        proc.send_signal(signal.SIGHUP)
        applied = await wait_event(log, "reload: settings applied")
        refused = await wait_event(log, "reload: these settings change only at a restart; "
                                        "not applied")
        assert proc.poll() is None, "SIGHUP must not stop the daemon"
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(f"http://127.0.0.1:{stack.port}/readyz")).status_code == 200
    finally:
        status = stop_daemon(proc)
    assert status == 0
    assert applied["changed"] == {
        "clusters.local.max_jobs": {"from": 6, "to": 2},
        "throttle.assets_in_flight": {"from": 30, "to": 7},
    }
    assert refused["settings"] == ["timing.watch_s"]


async def test_a_listener_that_cannot_start_stops_the_daemon_with_a_non_zero_exit(
    tmp_path: Path, mongo_uri: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"exit_{time.time_ns()}",
                           port=taken.getsockname()[1])
        stack.write_config()
        proc = stack.start_daemon()
        try:
            status = proc.wait(timeout=60)
        finally:
            stop_daemon(proc)
    assert status == 1
    assert "listener stopped unexpectedly" in (stack.root / "daemon.log").read_text()
