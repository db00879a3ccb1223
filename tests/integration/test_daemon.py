"""The daemon in-process: listener in the same event loop, supervisors restarted after a crash,
a bounded graceful stop."""

from __future__ import annotations

import itertools
import time
import uuid
from pathlib import Path

import anyio
import httpx
import pytest

from dasscod.devstack.stack import LocalStack
from dasscod.listener.app import create_app
from dasscod.pipelines import load_pipelines
from dasscod.settings import Settings
from dasscod.store import Stores
from dasscod.tokens import JobClaims, issue
from dasscod.wiring import build_daemon


def settings_for(tmp_path: Path, mongo_uri: str) -> Settings:
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"d_{uuid.uuid4().hex[:10]}")
    stack.write_config()
    data = stack.settings_data()
    data["timing"]["shutdown_s"] = 3.0
    return Settings.model_validate(data)


async def test_listener_runs_in_the_daemons_loop_and_stop_is_prompt(
    tmp_path: Path, mongo_uri: str
) -> None:
    settings = settings_for(tmp_path, mongo_uri)
    daemon = build_daemon(settings)
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            await daemon.ready.wait()
        base = f"http://127.0.0.1:{settings.listener.port}"
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            assert (await client.get("/readyz")).status_code == 200
            spec = (await client.get("/openapi.json")).json()
            assert "/api/v1/jobs/finished" in spec["paths"]
        started = time.monotonic()
        daemon.stop()
    # Every supervisor honours the stop event: nothing had to be cancelled at the deadline.
    assert time.monotonic() - started < settings.timing.shutdown_s - 1
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{settings.listener.port}/healthz")


async def test_a_crashing_supervisor_is_restarted_with_backoff(
    tmp_path: Path, mongo_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dasscod.daemon.RESTART_BACKOFF_S", (0.05, 0.2))
    daemon = build_daemon(settings_for(tmp_path, mongo_uri))
    runs: list[float] = []
    fourth = anyio.Event()

    async def flaky() -> None:
        runs.append(time.monotonic())
        if len(runs) < 4:
            raise RuntimeError(f"boom {len(runs)}")
        fourth.set()
        await daemon.stopping.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.supervise, "flaky", flaky)
        with anyio.fail_after(10):
            await fourth.wait()
        daemon.stop()
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert len(runs) == 4
    # Backoff doubles: 0.05, 0.1, 0.2 (never a hot restart loop).
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2
    await daemon.stores.close()


async def test_a_pipeline_naming_no_configured_cluster_is_refused(
    tmp_path: Path, mongo_uri: str
) -> None:
    settings = settings_for(tmp_path, mongo_uri)
    settings.clusters = {"elsewhere": settings.clusters["local"]}
    with pytest.raises(ValueError, match="no configured cluster"):
        build_daemon(settings)


async def test_callbacks_while_mongodb_is_down_get_503_with_retry_after() -> None:
    secret = "down-test-secret-0123456789abcdefghij"
    stores = Stores.connect("mongodb://127.0.0.1:9/?directConnection=true", "x",
                            load_pipelines(), timeout_s=0.3)
    app = create_app(stores, secret)
    token = issue(secret, JobClaims("a-1", "load", 1), ttl_s=60)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        answer = await client.post(
            "/api/v1/jobs/started",
            json={"asset_guid": "a-1", "job": "load", "attempt": 1},
            headers={"Authorization": f"Bearer {token}"},
        )
        ready = await client.get("/readyz")
    await stores.close()
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "5"
    assert ready.status_code == 503
