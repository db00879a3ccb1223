"""Two `dasscod run` processes on one database: one leads, the other waits as a standby and
takes over when the leader is killed or paused past its lease. Jobs call back through a proxy
that, like a load balancer, sends each connection to the daemon whose /readyz says "ready"."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.from_thread import start_blocking_portal
from pymongo import AsyncMongoClient

from dasscod.devstack.failover import ReadyProxy, writes_after
from dasscod.devstack.mongo import free_port
from dasscod.devstack.stack import LocalStack, stop_daemon
from tests.e2e.test_daemon_e2e import (
    assert_each_attempt_ran_once,
    assert_finished,
    db,
    deliver_batch,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.e2e
__all__ = ["db"]  # the fixture, used by name

LEASE_S = 3.0
OPS_TOKEN = "failover-ops-token-0123456789abcdef"


@pytest.fixture
def proxy() -> Iterator[ReadyProxy]:
    """The proxy on its own event loop (a thread): it keeps forwarding while a test waits."""
    proxy = ReadyProxy([free_port(), free_port()])
    with start_blocking_portal() as portal:
        future, _ = portal.start_task(proxy.run)
        yield proxy
        future.cancel()


def start(stack: LocalStack, port: int, name: str, argv: list[str] | None = None
          ) -> subprocess.Popen[bytes]:
    """Start a daemon of the shared set-up on its own port (the config is read at start)."""
    stack.port = port
    stack.write_config()
    return stack.start_daemon(stack.root / f"{name}.log", argv=argv)


async def wait_status(proxy: ReadyProxy, port: int, status: str, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await proxy.ready(port) == status:
            return time.monotonic()
        await anyio.sleep(0.05)
    pytest.fail(f"the daemon on port {port} did not say {status!r} within {timeout_s:.0f} s")


def make_stack(tmp_path: Path, mongo_uri: str, database: str, proxy: ReadyProxy,
               sleep_s: float = 0.6) -> LocalStack:
    return LocalStack(
        tmp_path / "stack", mongo_uri, database=database, lease_s=LEASE_S,
        public_url=f"http://127.0.0.1:{proxy.port}",
        job_env={"DASSCO_TEST_LOG": str(tmp_path / "runs.jsonl"),
                 "DASSCO_TEST_SLEEP_S": str(sleep_s)},
        control_tokens={"ops": OPS_TOKEN},
    )  # fmt: skip


async def test_the_standby_takes_over_a_killed_leader_and_runs_nothing_twice(
    tmp_path: Path, mongo_uri: str, db: tuple[AsyncMongoClient[dict[str, Any]], str],
    proxy: ReadyProxy,
) -> None:
    client, database = db
    stack = make_stack(tmp_path, mongo_uri, database, proxy)
    leader_port, standby_port = proxy.backends
    stack.write_config()
    guids = deliver_batch(stack, "failover", 4)
    leader = start(stack, leader_port, "leader")
    standby: subprocess.Popen[bytes] | None = None
    try:
        await wait_status(proxy, leader_port, "ready", 60)
        standby = start(stack, standby_port, "standby")
        await wait_status(proxy, standby_port, "standby", 60)
        assert await proxy.ready(standby_port) == "standby"  # /healthz-level: it answers
        await wait_until(client, database, {"job_list.1.status": "DONE"}, 1, timeout_s=90)
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        killed = time.monotonic()
        took_over = await wait_status(proxy, standby_port, "ready", 30)
        assert took_over - killed <= LEASE_S + 2, "the standby takes over within the lease"
        docs = await wait_for(client, database, guids, timeout_s=180)
    finally:
        stop_daemon(leader)
        status = stop_daemon(standby) if standby is not None else None
    assert status == 0, (stack.root / "standby.log").read_text()[-3000:]
    assert_finished(docs)
    runs = assert_each_attempt_ran_once(tmp_path / "runs.jsonl")
    ran = {(r["guid"], r["job"], r["attempt"]) for r in runs}
    for doc in docs:
        for job in doc["job_list"]:
            assert (doc["_id"], job["name"], job["attempt"]) in ran
    lease = await client[database]["lease"].find_one({"_id": "leader"})
    assert lease is not None and lease["term"] == 2, lease


async def test_a_leader_paused_past_its_lease_writes_nothing_after_it_resumes(
    tmp_path: Path, mongo_uri: str, db: tuple[AsyncMongoClient[dict[str, Any]], str],
    proxy: ReadyProxy,
) -> None:
    client, database = db
    # Jobs long enough that the pause lands while the leader has work under way.
    stack = make_stack(tmp_path, mongo_uri, database, proxy, sleep_s=2.0)
    leader_port, standby_port = proxy.backends
    stack.write_config()
    guids = deliver_batch(stack, "paused", 4)
    writes = tmp_path / "leader-writes.jsonl"
    leader = start(stack, leader_port, "leader",
                   argv=[sys.executable, "-m", "dasscod.devstack.failover", str(writes)])
    standby: subprocess.Popen[bytes] | None = None
    refused: list[int] = []

    async def pause_pipeline_on_the_old_leader() -> None:
        """An operator's write sent to the paused leader: it waits in the socket and is
        read the moment the leader resumes."""
        async with httpx.AsyncClient(timeout=60) as http:
            answer = await http.post(
                f"http://127.0.0.1:{leader_port}/api/v1/control/pause",
                json={"kind": "pipeline", "name": "PIPEPIOF0001"},
                headers={"Authorization": f"Bearer {OPS_TOKEN}"},
            )
        refused.append(answer.status_code)

    try:
        await wait_status(proxy, leader_port, "ready", 60)
        standby = start(stack, standby_port, "standby")
        await wait_status(proxy, standby_port, "standby", 60)
        await wait_until(client, database, {"job_list.0.status": "DONE"}, 1, timeout_s=90)
        leader.send_signal(signal.SIGSTOP)
        async with anyio.create_task_group() as tg:
            tg.start_soon(pause_pipeline_on_the_old_leader)
            await wait_status(proxy, standby_port, "ready", 30)
            await anyio.sleep(1.0)  # the new leader at work
            resumed = time.monotonic()
            leader.send_signal(signal.SIGCONT)
            # Back from the pause, the old leader finds its lease gone and stands by.
            await wait_status(proxy, leader_port, "standby", 30)
        docs = await wait_for(client, database, guids, timeout_s=180)
    finally:
        leader.send_signal(signal.SIGCONT)
        leader_status = stop_daemon(leader)
        if standby is not None:
            stop_daemon(standby)
    leader_log = (stack.root / "leader.log").read_text()
    assert leader_status == 0, leader_log[-3000:]
    assert "stepping down" in leader_log
    assert refused == [503], "the old leader refused the write it read after resuming"
    assert writes_after(writes, resumed) == [], "the deposed leader wrote after it resumed"
    assert writes_after(writes, 0.0), "the write log saw the leader's writes before the pause"
    assert await client[database]["control"].count_documents({}) == 0 or not await client[
        database]["control"].find_one({"kind": "pipeline", "name": "PIPEPIOF0001"})
    assert_finished(docs)
    assert_each_attempt_ran_once(tmp_path / "runs.jsonl")
