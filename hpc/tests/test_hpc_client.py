"""The callback client against a real HTTP server: retries until acknowledged, permanent
refusals, Retry-After, the deadline."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from dassco_hpc import CallbackClient, CallbackRejected, CallbackUndelivered
from dassco_hpc.client import EXCEPTION_MAX, REASON_MAX, retry_after_s
from listener_stub import StubListener, free_port

TOKEN = "test-token"
GUID = "asset-1"


class Recorder:
    """Collects the client's log lines; `retries` is set once `n` retries were logged."""

    def __init__(self, n: int = 1_000_000) -> None:
        self.lines: list[str] = []
        self.retries = threading.Event()
        self.n = n

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if sum("retry" in x for x in self.lines) >= self.n:
            self.retries.set()


def client(base_url: str, **changes: Any) -> CallbackClient:
    settings: dict[str, Any] = {
        "deadline_s": 10.0,
        "timeout_s": 2.0,
        "backoff_s": 0.01,
        "backoff_max_s": 0.05,
        "log": Recorder(),
    }
    settings.update(changes)
    return CallbackClient(base_url, TOKEN, **settings)


def test_delivers_exactly_once_after_the_listener_was_down() -> None:
    port = free_port()
    log = Recorder(n=3)
    stub = StubListener(port=port)
    c = client(stub.base_url, log=log)

    def start_late() -> None:
        # The listener comes up only after the client has been refused three times.
        if log.retries.wait(10):
            stub.start()

    starter = threading.Thread(target=start_late)
    starter.start()
    try:
        ack = c.started(GUID, "load", 1, hpc_job_id="123")
    finally:
        starter.join()
        stub.stop()
    assert ack.applied
    assert ack.status == "RUNNING"
    [request] = stub.requests
    assert request.path == "/jobs/started"
    assert request.authorization == f"Bearer {TOKEN}"
    body = request.body
    assert body["asset_guid"] == GUID
    assert body["job"] == "load"
    assert body["attempt"] == 1
    assert body["hpc_job_id"] == "123"
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None
    retries = [line for line in log.lines if "retry" in line]
    assert len(retries) >= 3
    assert all("POST /jobs/started" in line for line in retries)
    assert not any(TOKEN in line for line in log.lines), "the token must never be logged"


def test_retries_5xx_429_and_dropped_connections(stub: StubListener) -> None:
    stub.answer("/jobs/finished", 503)
    stub.answer("/jobs/finished", 500)
    stub.answer("/jobs/finished", 429)
    stub.drop("/jobs/finished")
    ack = client(stub.base_url).finished(
        GUID, "ocr", 2, results={"asset_ready": False}, run_time_s=1.5
    )
    assert ack.applied
    requests = stub.to("/jobs/finished")
    assert len(requests) == 5
    assert all(r.body == requests[0].body for r in requests), "the same callback each time"
    assert requests[0].body["results"] == {"asset_ready": False}
    assert requests[0].body["run_time_s"] == 1.5


def test_a_request_that_times_out_is_sent_again(stub: StubListener) -> None:
    stub.hang("/jobs/started")
    ack = client(stub.base_url, timeout_s=0.2).started(GUID, "load", 1)
    assert ack.applied
    assert len(stub.to("/jobs/started")) == 2


@pytest.mark.parametrize("status", [401, 403, 404, 422, 400])
def test_permanent_refusals_are_not_retried(stub: StubListener, status: int) -> None:
    stub.answer(None, status, body={"detail": "no such thing"}, times=None)
    log = Recorder()
    with pytest.raises(CallbackRejected) as caught:
        client(stub.base_url, log=log).failed(GUID, "load", 1, reason="x", retryable=True)
    assert caught.value.status == status
    assert caught.value.detail == "no such thing"
    assert caught.value.auth is (status in (401, 403))
    assert "no such thing" in str(caught.value)
    assert len(stub.requests) == 1
    assert not any("retry" in line for line in log.lines)


def test_a_wrong_token_is_refused_at_once(stub: StubListener) -> None:
    with pytest.raises(CallbackRejected) as caught:
        CallbackClient(stub.base_url, "wrong-token", backoff_s=0.01).post("/jobs/started", {})
    assert caught.value.status == 401
    assert caught.value.auth
    assert "DASSCO_TOKEN" in str(caught.value)
    assert "wrong-token" not in str(caught.value)


def test_retry_after_is_honoured(stub: StubListener) -> None:
    stub.answer("/jobs/started", 503, headers={"Retry-After": "7"})
    waits: list[float] = []
    c = client(stub.base_url, sleep=waits.append, backoff_s=0.001, backoff_max_s=0.001)
    assert c.started(GUID, "load", 1).applied
    assert waits == [7.0]
    assert len(stub.to("/jobs/started")) == 2


def test_retry_after_in_real_time(stub: StubListener) -> None:
    stub.answer("/jobs/started", 503, headers={"Retry-After": "0.3"})
    client(stub.base_url, backoff_s=0.001, backoff_max_s=0.001).started(GUID, "load", 1)
    first, second = stub.to("/jobs/started")
    assert second.at - first.at >= 0.29


def test_retry_after_header_forms() -> None:
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert retry_after_s("3") == 3.0
    assert retry_after_s("-5") == 0.0
    assert retry_after_s(None) is None
    assert retry_after_s("soon") is None
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert retry_after_s(later, now=lambda: now) == 90.0


def test_backoff_grows_exponentially_up_to_the_cap(stub: StubListener) -> None:
    stub.answer("/jobs/started", 503, times=6)
    waits: list[float] = []
    c = client(
        stub.base_url,
        sleep=waits.append,
        jitter=lambda: 1.0,
        backoff_s=0.5,
        backoff_max_s=3.0,
        deadline_s=1000.0,
    )
    c.started(GUID, "load", 1)
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_full_jitter_draws_below_the_backoff(stub: StubListener) -> None:
    stub.answer("/jobs/started", 503, times=2)
    waits: list[float] = []
    c = client(
        stub.base_url,
        sleep=waits.append,
        jitter=lambda: 0.25,
        backoff_s=2.0,
        backoff_max_s=30.0,
        deadline_s=1000.0,
    )
    c.started(GUID, "load", 1)
    assert waits == [0.5, 1.0]


def test_the_deadline_bounds_the_retries(stub: StubListener) -> None:
    stub.answer("/jobs/finished", 503, times=None)
    log = Recorder()
    c = client(stub.base_url, deadline_s=0.5, log=log)
    begin = time.monotonic()
    with pytest.raises(CallbackUndelivered) as caught:
        c.finished(GUID, "ocr", 1, results={"clean_up": True}, run_time_s=0.1)
    assert time.monotonic() - begin < 0.5 + 2.0
    assert caught.value.path == "/jobs/finished"
    assert caught.value.method == "POST"
    assert caught.value.body["results"] == {"clean_up": True}
    assert "503" in caught.value.last_error
    assert len(stub.requests) > 1
    assert "giving up" in log.lines[-1]


def test_a_long_retry_after_past_the_deadline_gives_up_at_once(stub: StubListener) -> None:
    stub.answer("/jobs/started", 503, headers={"Retry-After": "120"})
    waits: list[float] = []
    with pytest.raises(CallbackUndelivered):
        client(stub.base_url, deadline_s=60.0, sleep=waits.append).started(GUID, "load", 1)
    assert waits == []


def test_failed_truncates_reason_and_keeps_the_end_of_the_traceback(stub: StubListener) -> None:
    trace = "Traceback (most recent call last):\n" + "  frame\n" * 10_000 + "ValueError: boom"
    client(stub.base_url).failed(
        GUID,
        "ocr",
        1,
        reason="r" * 10_000,
        retryable=False,
        exit_code=1,
        exception=trace,
        run_time_s=0.5,
    )
    [request] = stub.to("/jobs/failed")
    body = request.body
    assert len(body["reason"]) <= REASON_MAX
    assert len(body["exception"]) <= EXCEPTION_MAX
    assert body["exception"].endswith("ValueError: boom")
    assert body["retryable"] is False
    assert body["exit_code"] == 1
    assert body["run_time_s"] == 0.5


def test_reads_and_generic_calls(stub: StubListener) -> None:
    stub.gets["/assets/asset-1/metadata"] = {"asset_guid": GUID, "barcode": []}
    stub.gets["/assets/asset-1/links"] = {"asset_guid": GUID, "files": []}
    c = client(stub.base_url)
    assert c.metadata(GUID) == {"asset_guid": GUID, "barcode": []}
    assert c.links(GUID) == {"asset_guid": GUID, "files": []}
    assert c.post("/assets/asset-1/ready") == {"applied": True, "status": "RUNNING", "detail": None}
    assert c.add_file(GUID, name="a.jpg", type="jpg", check_sum=1, file_size_mb=0.5).applied
    assert stub.to("/assets/asset-1/files")[0].body == {
        "name": "a.jpg",
        "type": "jpg",
        "check_sum": 1,
        "file_size": 0.5,
    }
    with pytest.raises(CallbackRejected) as caught:
        c.get("/assets/asset-1/nothing")
    assert caught.value.status == 404


def test_the_token_is_not_in_the_repr() -> None:
    assert TOKEN not in repr(client("http://127.0.0.1:1/api/v1"))
