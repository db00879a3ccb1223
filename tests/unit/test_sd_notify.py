"""The notify helper speaks systemd's datagram protocol: a real AF_UNIX socket receives it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dasscod import sd_notify


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_fields_arrive_as_one_datagram(notify_socket: socket.socket) -> None:
    assert sd_notify.notify("READY=1", "STATUS=running 2 jobs")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=running 2 jobs"
    assert sd_notify.status("standby")
    assert notify_socket.recv(4096) == b"STATUS=standby"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sd_notify.notify("READY=1")


def test_a_socket_nobody_listens_on_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert not sd_notify.notify("READY=1")


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sd_notify.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    assert sd_notify.watchdog_interval_s() == 3.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # systemd meant another process
    assert sd_notify.watchdog_interval_s() is None
