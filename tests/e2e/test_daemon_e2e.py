"""End to end: `dasscod run` as a real process takes assets from the intake folder through every
HERB0001 job, the direct scheduler running `dassco-hpc run` with the test module as detached
processes that call back over HTTP. Then the same with the daemon SIGKILLed mid-run."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pymongo import AsyncMongoClient

from dasscod.devstack.stack import LocalStack, deliver, stop_daemon
from dasscod.pipelines import load_pipelines

pytestmark = pytest.mark.e2e

HERB_JOBS = [j.name for j in load_pipelines()["PIPEHERB0001"].jobs]


@pytest.fixture
async def db(mongo_uri: str) -> AsyncIterator[tuple[AsyncMongoClient[dict[str, Any]], str]]:
    name = f"e2e_{uuid.uuid4().hex[:10]}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        yield client, name
    finally:
        await client.drop_database(name)
        await client.close()


async def wait_for(
    client: AsyncMongoClient[dict[str, Any]], database: str, guids: list[str], timeout_s: float
) -> list[dict[str, Any]]:
    """Poll the store until every asset has settled (DONE or ERROR) or the time is up."""
    deadline = time.monotonic() + timeout_s
    docs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        docs = await client[database]["track"].find({"_id": {"$in": guids}}).to_list()
        if len(docs) == len(guids) and all(d["jobs_status"] in ("DONE", "ERROR") for d in docs):
            return docs
        await anyio.sleep(0.25)
    states = {d["_id"]: (d["jobs_status"], [(j["name"], j["status"]) for j in d["job_list"]])
              for d in docs}
    pytest.fail(f"assets not finished after {timeout_s:.0f} s: {states}")


async def wait_until(
    client: AsyncMongoClient[dict[str, Any]], database: str, query: dict[str, Any], n: int,
    timeout_s: float,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await client[database]["track"].count_documents(query) >= n:
            return
        await anyio.sleep(0.1)
    pytest.fail(f"no {n} assets matching {query} within {timeout_s:.0f} s")


def executions(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def assert_each_attempt_ran_once(log: Path) -> list[dict[str, Any]]:
    runs = executions(log)
    counts = Counter((r["guid"], r["job"], r["attempt"]) for r in runs)
    twice = {k: n for k, n in counts.items() if n > 1}
    assert not twice, f"job attempts that ran more than once: {twice}"
    return runs


def assert_finished(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        assert doc["jobs_status"] == "DONE", doc["_id"]
        assert [j["name"] for j in doc["job_list"]] == HERB_JOBS
        assert all(j["status"] == "DONE" for j in doc["job_list"]), doc["job_list"]
        # Every job's life is in the history, and it ended in DONE.
        for job in HERB_JOBS:
            steps = [h for h in doc["history"] if h["job"] == job]
            assert steps and steps[-1]["to"] == "DONE", (doc["_id"], job, steps)


def deliver_batch(stack: LocalStack, prefix: str, n: int) -> list[str]:
    """Deliver `n` assets to the stack's intake folder; their guids."""
    guids = [f"{prefix}-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    for guid in guids:
        deliver(stack.intake, guid)
    return guids


def make_stack(tmp_path: Path, mongo_uri: str, database: str, **job_env: str) -> LocalStack:
    stack = LocalStack(
        tmp_path / "stack",
        mongo_uri,
        database=database,
        job_env={"DASSCO_TEST_LOG": str(tmp_path / "runs.jsonl"), **job_env},
    )
    stack.write_config()
    return stack


async def test_assets_go_through_every_herb0001_job(
    tmp_path: Path, mongo_uri: str, db: tuple[AsyncMongoClient[dict[str, Any]], str]
) -> None:
    client, database = db
    stack = make_stack(tmp_path, mongo_uri, database)
    guids = deliver_batch(stack, "e2e", 3)
    proc = stack.start_daemon()
    try:
        docs = await wait_for(client, database, guids, timeout_s=120)
    finally:
        status = stop_daemon(proc)
    assert status == 0, (stack.root / "daemon.log").read_text()[-3000:]
    assert_finished(docs)
    runs = assert_each_attempt_ran_once(tmp_path / "runs.jsonl")
    assert {(r["guid"], r["job"]) for r in runs} == {(g, j) for g in guids for j in HERB_JOBS}
    metadata = await client[database]["metadata"].find({"_id": {"$in": guids}}).to_list()
    assert all(m["barcode"] for m in metadata), "barcode results reached the metadata store"
    assert list(stack.intake.iterdir()) == [], "intake folder emptied"
    log = (stack.root / "daemon.log").read_text()
    assert stack.token_secret not in log, "the token secret must never be logged"


INTERRUPTED = "its submission was interrupted before the job's process recorded itself"


async def test_sigkill_mid_run_loses_nothing_and_runs_nothing_twice(
    tmp_path: Path, mongo_uri: str, db: tuple[AsyncMongoClient[dict[str, Any]], str]
) -> None:
    client, database = db
    # Slow jobs, so that the kill lands while jobs are running and callbacks are due.
    stack = make_stack(tmp_path, mongo_uri, database, DASSCO_TEST_SLEEP_S="0.6")
    guids = deliver_batch(stack, "kill", 4)
    proc = stack.start_daemon()
    try:
        # Kill once some assets are past their first job and others are mid-pipeline.
        await wait_until(client, database, {"job_list.1.status": "DONE"}, 1, timeout_s=90)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        active = await client[database]["track"].count_documents({"in_flight": True})
        assert active > 0, "the kill should land while jobs are in flight"
        proc = stack.start_daemon()
        docs = await wait_for(client, database, guids, timeout_s=180)
    finally:
        status = stop_daemon(proc)
    assert status == 0
    assert_finished(docs)
    runs = assert_each_attempt_ran_once(tmp_path / "runs.jsonl")
    # Every job ran, and every DONE job's recorded attempt is one that really ran.
    ran = {(r["guid"], r["job"], r["attempt"]) for r in runs}
    for doc in docs:
        for job in doc["job_list"]:
            assert (doc["_id"], job["name"], job["attempt"]) in ran
    # No callback was lost: jobs that finished while the daemon was down delivered their
    # results when it came back, so nothing had to be declared lost and run again. The one
    # attempt a kill may cost is a direct submission it cut short before the job's process
    # recorded itself: that job never ran (its folder is settled so it never can), and its
    # next attempt is the first to run (docs/operations.md, "A kill during a submission").
    for doc in docs:
        lost = [h for h in doc["history"] if "lost" in h["cause"]]
        interrupted = [h for h in lost if INTERRUPTED in h["cause"]]
        assert lost == interrupted, lost
        assert len(interrupted) <= 1, interrupted
        for job in doc["job_list"]:
            spent = sum(1 for h in interrupted if h["job"] == job["name"])
            assert job["attempt"] == 1 + spent, (job, doc["history"])


async def test_sigterm_stops_within_ten_seconds(
    tmp_path: Path, mongo_uri: str, db: tuple[AsyncMongoClient[dict[str, Any]], str]
) -> None:
    _, database = db
    stack = make_stack(tmp_path, mongo_uri, database)
    proc = stack.start_daemon()
    try:
        deadline = time.monotonic() + 30
        log = stack.root / "daemon.log"
        while '"ready"' not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "daemon not ready within 30 s"
            await anyio.sleep(0.1)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=15)
        assert time.monotonic() - started < 10
        assert status == 0
    finally:
        stop_daemon(proc)


async def test_a_failed_attempt_is_retried_and_the_asset_finishes(
    tmp_path: Path, mongo_uri: str, db: tuple[AsyncMongoClient[dict[str, Any]], str]
) -> None:
    client, database = db
    stack = make_stack(tmp_path, mongo_uri, database, DASSCO_TEST_FAIL_JOBS="barcode:1")
    guids = deliver_batch(stack, "retry", 2)
    proc = stack.start_daemon()
    try:
        docs = await wait_for(client, database, guids, timeout_s=120)
    finally:
        assert stop_daemon(proc) == 0
    assert_finished(docs)
    assert_each_attempt_ran_once(tmp_path / "runs.jsonl")
    for doc in docs:
        barcode = next(j for j in doc["job_list"] if j["name"] == "barcode")
        assert barcode["attempt"] == 2
        steps = [(h["from"], h["to"]) for h in doc["history"] if h["job"] == "barcode"]
        assert ("RUNNING", "RETRY") in steps and ("RETRY", "WAITING") in steps, steps


async def test_a_job_that_keeps_failing_ends_in_a_visible_error(
    tmp_path: Path, mongo_uri: str, db: tuple[AsyncMongoClient[dict[str, Any]], str]
) -> None:
    client, database = db
    stack = make_stack(tmp_path, mongo_uri, database, DASSCO_TEST_FAIL_JOBS="ocr")
    guid = f"broken-{uuid.uuid4().hex[:6]}"
    deliver(stack.intake, guid)
    proc = stack.start_daemon()
    try:
        [doc] = await wait_for(client, database, [guid], timeout_s=120)
    finally:
        assert stop_daemon(proc) == 0
    jobs = {j["name"]: j for j in doc["job_list"]}
    assert doc["jobs_status"] == "ERROR"
    assert jobs["ocr"]["status"] == "ERROR"
    assert jobs["ocr"]["attempt"] == jobs["ocr"]["max_attempts"] == 3
    assert "test failure requested for ocr attempt 3" in (jobs["ocr"]["last_error"] or "")
    # The jobs after it never started; the ones before it are done.
    assert jobs["barcode"]["status"] == "DONE"
    assert all(jobs[j]["status"] == "WAITING" for j in ("derivatives", "upload", "clean_up"))
    runs = assert_each_attempt_ran_once(tmp_path / "runs.jsonl")
    assert sorted(r["attempt"] for r in runs if r["job"] == "ocr") == [1, 2, 3]
