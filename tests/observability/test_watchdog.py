"""The daemon under a stand-in systemd: a datagram socket as NOTIFY_SOCKET receives READY,
STATUS, WATCHDOG and STOPPING; the pings stop while the event loop is blocked and while a
supervisor is stuck, and resume when it moves again."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from dasscod.devstack.stack import LocalStack
from dasscod.settings import Settings
from dasscod.watchdog import Progress, beat
from dasscod.wiring import build_daemon

INTERVAL_S = 1.0


class FakeSystemd:
    """Collects (arrival time, field) for every field of every datagram, in a thread, so that
    it keeps listening while the daemon's event loop is blocked."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.fields: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            now = time.monotonic()
            self.fields += [(now, f) for f in data.decode().split("\n")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def pings(self, start: float, end: float) -> int:
        return sum(1 for at, f in self.fields if f == "WATCHDOG=1" and start <= at <= end)

    def seen(self, prefix: str) -> list[str]:
        return [f for _, f in self.fields if f.startswith(prefix)]


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", str(int(INTERVAL_S * 1_000_000)))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield fake
    fake.close()


def settings_for(tmp_path: Path, mongo_uri: str) -> Settings:
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"wd_{uuid.uuid4().hex[:10]}")
    stack.write_config()
    data = stack.settings_data()
    data["timing"]["shutdown_s"] = 3.0
    return Settings.model_validate(data)


async def wait_pings(systemd: FakeSystemd, n: int, timeout_s: float = 10) -> None:
    start = time.monotonic()
    with anyio.fail_after(timeout_s):
        while True:
            if systemd.pings(start, time.monotonic()) >= n:
                return
            await anyio.sleep(0.05)


async def test_ready_status_pings_stopping_and_a_blocked_loop(
    tmp_path: Path, mongo_uri: str, systemd: FakeSystemd
) -> None:
    daemon = build_daemon(settings_for(tmp_path, mongo_uri))
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            await daemon.ready.wait()
        await wait_pings(systemd, 3)
        # The test-only hook: a synchronous call that blocks the event loop for 3 intervals.
        blocked_at = time.monotonic()
        time.sleep(3 * INTERVAL_S)  # noqa: ASYNC251 -- blocking the loop is the point
        unblocked_at = time.monotonic()
        await wait_pings(systemd, 2)  # and they resume once it runs again
        daemon.stop()
    assert systemd.pings(blocked_at + 0.1, unblocked_at) == 0
    assert systemd.seen("READY=1")
    assert "STATUS=running 0 jobs" in systemd.seen("STATUS=")
    assert systemd.seen("STOPPING=1")


async def test_a_stuck_supervisor_stops_the_pings(
    tmp_path: Path, mongo_uri: str, systemd: FakeSystemd
) -> None:
    daemon = build_daemon(settings_for(tmp_path, mongo_uri))
    release = anyio.Event()

    async def hangs_until_released() -> None:
        beat(0.1)
        await release.wait()  # a connection that never answers
        while not daemon.stopping.is_set():
            beat(0.2)
            with anyio.move_on_after(0.2):
                await daemon.stopping.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            await daemon.ready.wait()
        await wait_pings(systemd, 2)
        tg.start_soon(daemon.supervise, "test-hang", hangs_until_released)
        with anyio.fail_after(10):
            while True:
                if "STATUS=stuck: test-hang made no progress" in systemd.seen("STATUS="):
                    break
                await anyio.sleep(0.05)
        stuck_at = time.monotonic()
        await anyio.sleep(2 * INTERVAL_S)
        silent_until = time.monotonic()
        release.set()
        await wait_pings(systemd, 2)
        daemon.stop()
    assert systemd.pings(stuck_at, silent_until) == 0


def test_progress_is_stuck_only_past_its_promise_and_the_allowance() -> None:
    now = [100.0]
    progress = Progress(clock=lambda: now[0])
    progress.beat("dispatch.ocr", 5.0)
    now[0] = 105.9
    assert progress.stuck(1.0) == []
    now[0] = 106.1
    assert progress.stuck(1.0) == ["dispatch.ocr"]
    progress.forget("dispatch.ocr")
    assert progress.stuck(1.0) == []
