"""The shipped alert rules against the real thing: Prometheus scrapes a running daemon and
evaluates deploy/prometheus/dasscod-rules.yml, Alertmanager routes the alert to a webhook
receiver in this test. An asset whose job keeps failing goes to ERROR: the alert arrives; an
operator retries the job: the resolved notification arrives."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from pymongo import AsyncMongoClient

from dasscod.devstack.mongo import free_port
from dasscod.devstack.stack import LocalStack, deliver, stop_daemon, to_toml

pytestmark = pytest.mark.e2e

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "dasscod-rules.yml"
ADMIN = "alert-test-admin-token-0123456789"


class Receiver:
    """A Slack-less chat: records every notification Alertmanager posts, and when."""

    def __init__(self) -> None:
        self.notifications: list[tuple[float, dict[str, Any]]] = []
        self.arrived = anyio.Event()
        self.app = FastAPI()

        @self.app.post("/hook")
        async def hook(request: Request) -> dict[str, str]:
            self.notifications.append((time.time(), await request.json()))
            self.arrived.set()
            self.arrived = anyio.Event()
            return {"ok": "yes"}

    async def wait_for(self, status: str, timeout_s: float) -> tuple[float, dict[str, Any]]:
        with anyio.fail_after(timeout_s):
            while True:
                for at, body in self.notifications:
                    if body["status"] == status and any(
                        a["labels"]["alertname"] == "DasscodAssetInError" for a in body["alerts"]
                    ):
                        return at, body
                await self.arrived.wait()


@contextlib.contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (tests/infra/install_packages.sh installs it)")
    return path


async def serve_receiver(rx: Receiver, port: int, ready: anyio.Event,
                         stop: anyio.Event) -> None:
    server = uvicorn.Server(uvicorn.Config(rx.app, host="127.0.0.1", port=port,
                                           log_config=None, access_log=False, lifespan="off"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        while True:  # uvicorn offers no event for "bound"
            if server.started:
                break
            await anyio.sleep(0.01)
        ready.set()
        await stop.wait()
        server.should_exit = True


async def test_an_asset_in_error_alerts_through_alertmanager_and_resolves_on_retry(
    tmp_path: Path, mongo_uri: str
) -> None:
    prometheus, alertmanager = binary("prometheus"), binary("prometheus-alertmanager")
    rx, hook_port = Receiver(), free_port()
    ready, stop = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_receiver, rx, hook_port, ready, stop)
        await ready.wait()
        try:
            await alert_and_resolve(tmp_path, mongo_uri, prometheus, alertmanager, rx, hook_port)
        finally:
            stop.set()


async def alert_and_resolve(tmp_path: Path, mongo_uri: str, prometheus: str, alertmanager: str,
                            rx: Receiver, hook_port: int) -> None:
    database = f"alert_{uuid.uuid4().hex[:10]}"
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=database,
                       # Every attempt the pipeline allows fails; the operator's retry runs.
                       job_env={"DASSCO_TEST_FAIL_JOBS": "barcode:1,barcode:2,barcode:3"},
                       control_tokens={"alice": ADMIN})
    stack.write_config()
    metrics_port, am_port, prom_port = free_port(), free_port(), free_port()
    data = stack.settings_data()
    data["metrics"] = {"port": metrics_port, "snapshot_s": 0.5}
    stack.config_file.write_text(to_toml(data), encoding="utf-8")

    am_config = tmp_path / "alertmanager.yml"
    am_config.write_text(f"""
route:
  receiver: hook
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: http://127.0.0.1:{hook_port}/hook
        send_resolved: true
""")
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{RULES}"]
alerting:
  alertmanagers:
    - static_configs: [{{targets: ["127.0.0.1:{am_port}"]}}]
scrape_configs:
  - job_name: dasscod
    static_configs: [{{targets: ["127.0.0.1:{metrics_port}"]}}]
""")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    daemon = stack.start_daemon()
    try:
        with process([alertmanager, f"--config.file={am_config}",
                      f"--storage.path={tmp_path / 'am-data'}",
                      f"--web.listen-address=127.0.0.1:{am_port}",
                      "--cluster.listen-address=", "--log.level=warn"],
                     tmp_path / "alertmanager.log"), \
             process([prometheus, f"--config.file={prom_config}",
                      f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                      f"--web.listen-address=127.0.0.1:{prom_port}",
                      "--rules.alert.resend-delay=1s", "--log.level=warn"],
                     tmp_path / "prometheus.log"):
            deliver(stack.intake, "alert-err-1")
            _, firing = await rx.wait_for("firing", timeout_s=60)
            track = await client[database]["track"].find_one({"_id": "alert-err-1"})
            assert track is not None and track["jobs_status"] == "ERROR"
            went_wrong = next(h["at"] for h in track["history"] if h["to"] == "ERROR")
            delay = rx.notifications[0][0] - went_wrong.timestamp()
            print(f"alert_delay_s={delay:.2f}")  # the number: ERROR -> webhook
            alert = next(a for a in firing["alerts"]
                         if a["labels"]["alertname"] == "DasscodAssetInError")
            assert alert["labels"]["pipeline"] == "PIPEHERB0001"
            assert alert["annotations"]["summary"] == "1 asset(s) of PIPEHERB0001 in ERROR"

            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.port}") as http:
                answer = await http.post(
                    "/api/v1/control/assets/alert-err-1/retry", json={"job": "barcode"},
                    headers={"Authorization": f"Bearer {ADMIN}"})
            assert answer.status_code == 200, answer.text
            _, resolved = await rx.wait_for("resolved", timeout_s=60)
            assert resolved["alerts"][0]["status"] == "resolved"
    finally:
        assert stop_daemon(daemon) == 0
        await client.drop_database(database)
        await client.close()
