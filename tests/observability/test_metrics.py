"""`GET /metrics` of a running daemon: an asset whose job keeps failing shows up in the store
gauges, the counters and the histograms, in Prometheus' text format."""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import httpx
from prometheus_client.parser import text_string_to_metric_families

from dasscod.devstack.mongo import free_port
from dasscod.devstack.stack import LocalStack, deliver
from dasscod.settings import Settings
from dasscod.wiring import build_daemon


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str,
          **labels: str) -> float:
    return sum(v for found, v in samples.get(name, [])
               if all(found.get(k) == want for k, want in labels.items()))


def failing_stack(tmp_path: Path, mongo_uri: str, **metrics: object) -> Settings:
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"m_{uuid.uuid4().hex[:10]}",
                       job_env={"DASSCO_TEST_FAIL_JOBS": "barcode"})
    stack.write_config()
    data = stack.settings_data()
    data["timing"]["shutdown_s"] = 3.0
    data["metrics"] = {"snapshot_s": 0.2, **metrics}
    return Settings.model_validate(data)


async def scrape_until(url: str, done: object, timeout_s: float = 60) -> str:
    """Scrape until `done(samples)` holds (the snapshot refreshes in the background)."""
    text = ""
    async with httpx.AsyncClient() as client:
        with anyio.fail_after(timeout_s):
            while True:
                answer = await client.get(url)
                assert answer.status_code == 200
                assert answer.headers["content-type"].startswith("text/plain")
                text = answer.text
                if done(parse(text)):  # type: ignore[operator]
                    return text
                await anyio.sleep(0.2)


async def test_an_asset_in_error_is_counted_on_a_separate_metrics_port(
    tmp_path: Path, mongo_uri: str
) -> None:
    port = free_port()
    settings = failing_stack(tmp_path, mongo_uri, port=port)
    deliver(settings.intake.folder, "metrics-err-1")
    daemon = build_daemon(settings)
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            await daemon.ready.wait()
        text = await scrape_until(
            f"http://127.0.0.1:{port}/metrics",
            lambda s: value(s, "dasscod_assets", status="ERROR") == 1,
        )
        async with httpx.AsyncClient() as client:
            # Not on the listener: the cluster network does not see the metrics.
            on_listener = await client.get(f"http://127.0.0.1:{settings.listener.port}/metrics")
        # The metrics port has the listener's bounds: 200 header lines get 431.
        async with await anyio.connect_tcp("127.0.0.1", port) as raw:
            await raw.send(b"GET /metrics HTTP/1.1\r\nHost: t\r\n" + b"X-A: b\r\n" * 200
                           + b"\r\n")
            with anyio.fail_after(5):
                flooded = await raw.receive()
        daemon.stop()
    assert on_listener.status_code == 404
    assert flooded.startswith(b"HTTP/1.1 431 "), flooded[:100]
    s = parse(text)
    assert value(s, "dasscod_assets", pipeline="PIPEHERB0001", status="ERROR") == 1
    assert value(s, "dasscod_jobs", pipeline="PIPEHERB0001", job="barcode", status="ERROR",
                 cluster="local") == 1
    assert value(s, "dasscod_jobs", job="ocr", status="WAITING") == 1
    assert value(s, "dasscod_transitions_total", job="barcode", to="ERROR") >= 1
    assert value(s, "dasscod_transitions_total", job="load", to="DONE") >= 1
    assert value(s, "dasscod_job_duration_seconds_count", job="load", cluster="local") >= 1
    assert value(s, "dasscod_dispatch_latency_seconds_count") >= 2
    assert value(s, "dasscod_callback_seconds_count", route="/api/v1/jobs/finished",
                 code="200") >= 1
    assert value(s, "dasscod_scheduler_command_seconds_count", cluster="local") >= 1
    assert value(s, "dasscod_cluster_up", cluster="local") == 1
    assert value(s, "dasscod_oldest_unfinished_asset_seconds") == 0  # ERROR is not "moving"
    assert "dasscod_ars_breaker_open" not in s  # no ARS configured
    assert value(s, "dasscod_disk_free_bytes", folder=str(settings.intake.folder)) > 0
    assert value(s, "process_resident_memory_bytes") > 0
    assert value(s, "dasscod_leader") == 1  # alone, it holds the lease
    assert "dasscod_ars_backlog" in {f.name for f in text_string_to_metric_families(text)}


async def test_metrics_on_the_listener_and_a_restarted_supervisor_counted(
    tmp_path: Path, mongo_uri: str
) -> None:
    settings = failing_stack(tmp_path, mongo_uri)
    daemon = build_daemon(settings)
    crashed = anyio.Event()

    async def crashes_once() -> None:
        if not crashed.is_set():
            crashed.set()
            raise RuntimeError("a supervisor bug")
        await daemon.stopping.wait()

    url = f"http://127.0.0.1:{settings.listener.port}/metrics"
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            await daemon.ready.wait()
        before = value(parse((await httpx.AsyncClient().get(url)).text),
                       "dasscod_supervisor_restarts_total", supervisor="test-crash")
        tg.start_soon(daemon.supervise, "test-crash", crashes_once)
        await scrape_until(url, lambda s: value(
            s, "dasscod_supervisor_restarts_total", supervisor="test-crash") == before + 1)
        daemon.stop()
