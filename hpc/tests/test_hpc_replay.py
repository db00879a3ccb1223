"""Saving undelivered callbacks and replaying them (in process, against the stub)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dassco_hpc import CallbackClient, CallbackUndelivered, exitcodes
from dassco_hpc.undelivered import FILENAME, REJECTED_FILENAME, replay, save
from listener_stub import Request, StubListener, free_port

TOKEN = "test-token"


def client(**changes: Any) -> CallbackClient:
    settings: dict[str, Any] = {
        "deadline_s": 5.0,
        "timeout_s": 2.0,
        "backoff_s": 0.01,
        "backoff_max_s": 0.02,
        "log": lambda line: None,
    }
    settings.update(changes)
    return CallbackClient("", TOKEN, **settings)


def saved(workdir: Path, url: str, path: str, n: int) -> None:
    body = {"asset_guid": "a1", "job": "ocr", "attempt": 1, "n": n}
    save(workdir, CallbackUndelivered("POST", path, body, "HTTP 503"), base_url=url)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_delivered_lines_go_refused_tokens_stay_rejected_lines_move(
    stub: StubListener, tmp_path: Path
) -> None:
    stub.answer("/jobs/failed", 422, body={"detail": "bad body"})
    stub.answer("/jobs/finished", 401, body={"detail": "job token expired"})
    saved(tmp_path, stub.base_url, "/jobs/started", 1)
    saved(tmp_path, stub.base_url, "/jobs/failed", 2)
    saved(tmp_path, stub.base_url, "/jobs/finished", 3)
    saved(tmp_path, stub.base_url, "/assets/a1/ready", 4)
    log: list[str] = []
    report = replay(tmp_path, client(log=log.append))
    assert (report.delivered, report.kept, report.rejected) == (2, 1, 1)
    assert report.exit_code == exitcodes.UNAVAILABLE
    assert [r.path for r in stub.requests] == [
        "/jobs/started",
        "/jobs/failed",
        "/jobs/finished",
        "/assets/a1/ready",
    ]
    assert [line["path"] for line in lines(tmp_path / FILENAME)] == ["/jobs/finished"]
    [rejected] = lines(tmp_path / REJECTED_FILENAME)
    assert rejected["path"] == "/jobs/failed"
    assert "bad body" in rejected["rejected"]
    assert not any(TOKEN in line for line in log)

    # With the right token the kept line goes through; the file disappears.
    report = replay(tmp_path, client())
    assert (report.delivered, report.kept, report.exit_code) == (1, 0, exitcodes.OK)
    assert not (tmp_path / FILENAME).exists()


def test_an_unreachable_listener_keeps_every_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/api/v1"
    for n in range(3):
        saved(tmp_path, url, "/jobs/started", n)
    before = (tmp_path / FILENAME).read_text()
    report = replay(tmp_path, client(deadline_s=0.2))
    assert report.exit_code == exitcodes.TEMPFAIL
    assert report.kept == 3
    assert (tmp_path / FILENAME).read_text() == before


def test_only_token_refusals_exit_77(stub: StubListener, tmp_path: Path) -> None:
    stub.answer(None, 403, times=None)
    saved(tmp_path, stub.base_url, "/jobs/started", 1)
    assert replay(tmp_path, client()).exit_code == exitcodes.NOPERM
    assert len(lines(tmp_path / FILENAME)) == 1


def test_the_url_can_be_overridden(stub: StubListener, tmp_path: Path) -> None:
    saved(tmp_path, "http://127.0.0.1:1/old/api", "/jobs/started", 1)
    report = replay(tmp_path, client(), base_url=stub.base_url)
    assert report.exit_code == exitcodes.OK
    assert [r.path for r in stub.requests] == ["/jobs/started"]


def test_lines_saved_during_a_replay_are_kept(stub: StubListener, tmp_path: Path) -> None:
    saved(tmp_path, stub.base_url, "/jobs/started", 1)
    saved(tmp_path, stub.base_url, "/jobs/finished", 2)

    def another_job_saves_meanwhile(request: Request) -> None:
        if request.body["n"] == 1:
            saved(tmp_path, stub.base_url, "/jobs/failed", 3)

    stub.on_request = another_job_saves_meanwhile
    report = replay(tmp_path, client())
    assert report.delivered == 2
    assert [line["body"]["n"] for line in lines(tmp_path / FILENAME)] == [3]


def test_malformed_lines_are_set_aside(stub: StubListener, tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_text("not json\n")
    saved(tmp_path, stub.base_url, "/jobs/started", 1)
    report = replay(tmp_path, client())
    assert (report.delivered, report.rejected) == (1, 1)
    assert not (tmp_path / FILENAME).exists()
    assert lines(tmp_path / REJECTED_FILENAME)[0]["line"] == "not json"


def test_nothing_to_replay(tmp_path: Path) -> None:
    assert replay(tmp_path, client()).exit_code == exitcodes.OK
    assert not (tmp_path / FILENAME).exists()


@pytest.mark.parametrize("n", [1, 5])
def test_saved_lines_hold_no_token(tmp_path: Path, n: int) -> None:
    for i in range(n):
        saved(tmp_path, "http://x/api/v1", "/jobs/started", i)
    text = (tmp_path / FILENAME).read_text()
    assert TOKEN not in text
    assert len(text.splitlines()) == n
    assert (tmp_path / FILENAME).stat().st_mode & 0o777 == 0o600
