"""The daemon and MongoDB trouble: an outage mid-run is one warning and one info line, not
supervisor crashes; waiting for MongoDB at start-up is told to systemd."""

from __future__ import annotations

import signal
import socket
import uuid
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from structlog.testing import capture_logs

from dasscod.devstack.mongo import mongo_server
from dasscod.devstack.stack import LocalStack
from dasscod.settings import Settings
from dasscod.wiring import build_daemon


def settings_for(tmp_path: Path, mongo_uri: str, **mongo: Any) -> Settings:
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"m_{uuid.uuid4().hex[:10]}")
    stack.write_config()
    data = stack.settings_data()
    data["timing"]["shutdown_s"] = 3.0
    data["mongo"].update(mongo)
    data["leader"] = {"lease_s": 10.0}
    return Settings.model_validate(data)


@pytest.fixture
def own_mongo(tmp_path: Path) -> Iterator[tuple[str, psutil.Process]]:
    """A MongoDB of this test's own, and its process (paused to make an outage)."""
    with mongo_server(tmp_path / "mongo") as uri:
        port = int(uri.rsplit(":", 1)[1].split("/")[0].split("?")[0])
        server = next(
            psutil.Process(c.pid) for c in psutil.net_connections("tcp")
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid
        )
        try:
            yield uri, server
        finally:
            server.send_signal(signal.SIGCONT)


async def back_again(logs: list[MutableMapping[str, Any]]) -> None:
    """Polls the captured log: structlog's capture offers no event to wait on."""
    for _ in iter(int, 1):
        if any(e["event"] == "MongoDB reachable again" for e in logs):
            return
        await anyio.sleep(0.1)


async def test_an_outage_mid_run_is_one_warning_and_one_info_line_not_crashes(
    tmp_path: Path, own_mongo: tuple[str, psutil.Process]
) -> None:
    uri, server = own_mongo
    settings = settings_for(tmp_path, uri, timeout_s=0.5, operation_timeout_s=1.0)
    daemon = build_daemon(settings)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            with anyio.fail_after(30):
                await daemon.ready.wait()
            server.send_signal(signal.SIGSTOP)
            await anyio.sleep(3.5)  # watchers, housekeeping and intake meet the outage
            server.send_signal(signal.SIGCONT)
            with anyio.fail_after(15):
                await back_again(logs)
            daemon.stop()
    events = [e["event"] for e in logs]
    assert events.count("MongoDB unreachable; waiting for it to come back") == 1, events
    assert events.count("MongoDB reachable again") == 1
    assert "supervisor crashed; restarting" not in events
    assert not [e for e in logs if e.get("exc_info") or e.get("exception")]
    assert "no longer the leader; standing by" not in events, "a short outage keeps the lease"


async def test_waiting_for_mongodb_at_start_up_is_told_to_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(tmp_path, "mongodb://127.0.0.1:9/?directConnection=true",
                            timeout_s=0.3)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(tmp_path / "notify"))
        systemd.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        daemon = build_daemon(settings)
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            with anyio.fail_after(10):
                await anyio.wait_readable(systemd)
            message = systemd.recv(4096).decode()
            daemon.stop()
    fields = dict(line.split("=", 1) for line in message.splitlines())
    assert fields["STATUS"].startswith("waiting for MongoDB: 127.0.0.1:9")
    assert int(fields["EXTEND_TIMEOUT_USEC"]) >= 1_000_000  # the wait plus the next attempt
    assert daemon.failure is None, "an unreachable server is waited for, not an error"
