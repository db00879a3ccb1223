"""End to end: operators act on a running daemon (`dasscod run` as a process, the direct
scheduler running the test module) through the `dasscod` commands: a cluster paused mid-run,
a drain, retries of failed jobs and from a job, the refusals, and the audit naming the token
behind each action. Cancelling a live Slurm job is in tests/slurm/test_control_slurm.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result
from pymongo import AsyncMongoClient

from dasscod.cli import main
from dasscod.devstack.stack import LocalStack, deliver, stop_daemon
from tests.e2e.test_daemon_e2e import HERB_JOBS, db, deliver_batch, executions, wait_for

pytestmark = pytest.mark.e2e
__all__ = ["db"]  # the fixture, imported for the tests below

TOKENS = {"alice": "alice-e2e-token-0123456789", "bob": "bob-e2e-token-0123456789ab"}
Db = tuple[AsyncMongoClient[dict[str, Any]], str]


def control_stack(tmp_path: Path, mongo_uri: str, database: str, *,
                  assets_in_flight: int = 30, **job_env: str) -> LocalStack:
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=database,
                       job_env={"DASSCO_TEST_LOG": str(tmp_path / "runs.jsonl"), **job_env},
                       control_tokens=TOKENS, assets_in_flight=assets_in_flight)
    stack.write_config()
    return stack


def cli(stack: LocalStack, *args: str, who: str = "alice", token: str | None = None) -> Result:
    """A `dasscod` command as an operator runs it: the daemon found from its configuration
    file, the token from the environment."""
    env = {"DASSCOD_CONTROL_TOKEN": token or TOKENS[who], "DASSCOD_CONFIG": "",
           "DASSCOD_CONTROL_URL": ""}
    return CliRunner().invoke(main, [*args, "--config", str(stack.config_file)], env=env)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def as_json(result: Result) -> Any:
    return json.loads(ok(result))


async def until(what: str, check: Callable[[], Any], timeout_s: float = 60) -> Any:
    """Poll `check` (an awaitable factory) until it returns something true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await anyio.sleep(0.1)
    pytest.fail(f"not within {timeout_s:.0f} s: {what}")


async def wait_ready(stack: LocalStack, proc: Any) -> None:
    log = stack.root / "daemon.log"

    async def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        return log.exists() and '"ready"' in log.read_text()

    await until("the daemon is ready", ready, timeout_s=30)


def claims_after(docs: list[dict[str, Any]], moment: datetime) -> list[tuple[str, str]]:
    return [(d["_id"], h["job"]) for d in docs for h in d["history"]
            if h["to"] == "STARTING" and h["at"] > moment]


async def test_a_cluster_paused_mid_run_takes_no_new_job_until_resumed(
    tmp_path: Path, mongo_uri: str, db: Db
) -> None:
    client, database = db
    track = client[database]["track"]
    stack = control_stack(tmp_path, mongo_uri, database, DASSCO_TEST_SLEEP_S="0.4")
    guids = deliver_batch(stack, "pause", 3)
    proc = stack.start_daemon()
    try:
        await until("the run is under way",
                    lambda: track.count_documents({"job_list.0.status": "DONE"}))
        paused = as_json(cli(stack, "pause", "cluster", "local", "--reason", "maintenance",
                             "--json"))
        assert paused["changed"] and paused["by"] == "alice"
        paused_at = datetime.fromisoformat(paused["at"])
        # The jobs that were running end; none starts after them.
        await until("the cluster's running jobs ended",
                    lambda: _none(track.count_documents({"queues": "on:local"})))
        docs = await track.find({"_id": {"$in": guids}}).to_list()
        assert not all(d["jobs_status"] == "DONE" for d in docs), "paused before the end"
        assert claims_after(docs, paused_at) == []
        shown = as_json(cli(stack, "clusters", "--json"))
        assert shown[0]["paused"]["by"] == "alice" and shown[0]["live_jobs"] == 0
        assert "by alice" in ok(cli(stack, "clusters"))
        ok(cli(stack, "resume", "cluster", "local", who="bob"))
        docs = await wait_for(client, database, guids, timeout_s=120)
    finally:
        assert stop_daemon(proc) == 0
    assert all(d["jobs_status"] == "DONE" for d in docs)
    records = await client[database]["audit"].find().sort("at", 1).to_list()
    assert [(r["by"], r["action"], r["target"], r["reason"]) for r in records] == [
        ("alice", "pause cluster", "cluster:local", "maintenance"),
        ("bob", "resume cluster", "cluster:local", None),
    ]


async def _none(count: Any) -> bool:
    return bool(await count == 0)


async def test_drain_takes_no_new_work_and_lets_what_is_in_flight_finish(
    tmp_path: Path, mongo_uri: str, db: Db
) -> None:
    client, database = db
    track = client[database]["track"]
    # One asset in flight at a time: the second waits, tracked but not started.
    stack = control_stack(tmp_path, mongo_uri, database, assets_in_flight=1,
                          DASSCO_TEST_SLEEP_S="0.3")
    first, second = deliver_batch(stack, "drain", 2)
    proc = stack.start_daemon()
    try:
        await until("one asset in flight", lambda: track.count_documents({"in_flight": True}))
        assert "draining" in ok(cli(stack, "drain", "--reason", "upgrade"))
        late = deliver_batch(stack, "late", 1)[0]
        assert "drained: no asset in flight" in ok(cli(stack, "drain", "--wait"))
        docs = {d["_id"]: d for d in await track.find().to_list()}
        assert docs[first]["jobs_status"] == "DONE", "what was in flight ran to its end"
        assert all(j["attempt"] == 0 for j in docs[second]["job_list"]), "nothing new started"
        assert late not in docs and (stack.intake / late).is_dir(), "intake took nothing"
        state = as_json(cli(stack, "limits", "--json"))
        assert state[0]["target"] == "assets_in_flight" and state[0]["in_use"] == 0
        ok(cli(stack, "drain", "--off"))
        docs_after = await wait_for(client, database, [first, second, late], timeout_s=120)
        audit = as_json(cli(stack, "audit", "--json"))
    finally:
        assert stop_daemon(proc) == 0
    assert all(d["jobs_status"] == "DONE" for d in docs_after)
    # Newest first; `drain --wait` asked again, which changed nothing (and says so).
    assert [(r["by"], r["action"], r["outcome"]) for r in audit][:2] == [
        ("alice", "end drain", "drain ended: new work is taken again"),
        ("alice", "drain", "already draining")]
    assert audit[2]["action"] == "drain" and audit[2]["reason"] == "upgrade"


async def test_failed_assets_are_explained_retried_and_rerun_from_a_job(
    tmp_path: Path, mongo_uri: str, db: Db
) -> None:
    client, database = db
    # ocr fails its three attempts; the fourth (after an operator's retry) works.
    stack = control_stack(tmp_path, mongo_uri, database,
                          DASSCO_TEST_FAIL_JOBS="ocr:1,ocr:2,ocr:3")
    one, two = deliver_batch(stack, "fail", 2)
    proc = stack.start_daemon()
    try:
        docs = await wait_for(client, database, [one, two], timeout_s=120)
        assert {d["jobs_status"] for d in docs} == {"ERROR"}
        # Why did it fail? The failing job, its error, where its output is, the timeline.
        why = ok(cli(stack, "show", one))
        assert "FAILED at ocr after 3 attempt(s): test failure requested for ocr attempt 3" in why
        assert f"dassco.{one}.ocr.3" in why and "stderr" in why
        assert "RUNNING -> RETRY" in why and "RUNNING -> ERROR" in why
        errors = as_json(cli(stack, "errors", "--json"))
        assert [(g["job"], g["count"]) for g in errors] == [("ocr", 2)]
        listed = as_json(cli(stack, "ls", "--status", "error", "--job", "ocr", "--json"))
        assert sorted(a["guid"] for a in listed["assets"]) == sorted([one, two])
        # The refusals: each one line saying what is wrong, nothing done.
        refused = cli(stack, "retry", one, "barcode")
        assert refused.exit_code == 1
        assert (f"job barcode of {one} is DONE, not ERROR or FAILED: nothing to retry (to run "
                f"it again: `dasscod retry {one} --from barcode`) (HTTP 409)") in refused.output
        unknown = cli(stack, "show", "no-such-asset")
        assert unknown.exit_code == 1 and "no asset no-such-asset" in unknown.output
        assert "(HTTP 404)" in cli(stack, "cancel", "no-such-asset").output
        wrong = cli(stack, "retry", one, "ocr", token="not-anyones-token-123456")
        assert wrong.exit_code == 1 and "unknown admin token" in wrong.output
        # Retry the failed job, and re-run the other asset from its barcode.
        assert "retrying ocr" in ok(cli(stack, "retry", one, "ocr", "--reason", "fixed",
                                        who="bob"))
        assert "running again from barcode" in ok(cli(stack, "retry", two, "--from", "barcode"))
        docs = await wait_for(client, database, [one, two], timeout_s=120)
        audit = as_json(cli(stack, "audit", "--json"))
        history = as_json(cli(stack, "show", two, "--json"))["history"]
    finally:
        assert stop_daemon(proc) == 0
    assert {d["jobs_status"] for d in docs} == {"DONE"}
    jobs = {d["_id"]: {j["name"]: j for j in d["job_list"]} for d in docs}
    assert jobs[one]["ocr"]["attempt"] == 4 and jobs[one]["barcode"]["attempt"] == 1
    assert jobs[two]["barcode"]["attempt"] == 2 and jobs[two]["ocr"]["attempt"] == 4
    runs = {(r["guid"], r["job"], r["attempt"]) for r in executions(tmp_path / "runs.jsonl")}
    assert (two, "barcode", 2) in runs and (one, "barcode", 2) not in runs
    assert all((g, j, 1) in runs for g in (one, two) for j in HERB_JOBS if j != "ocr")
    assert [(r["by"], r["action"], r["target"], r["reason"]) for r in audit] == [
        ("alice", "retry", f"asset:{two}", None),
        ("bob", "retry", f"asset:{one}", "fixed"),
    ]
    rerun = [h for h in history if h.get("by") == "alice"]
    assert rerun and all(h["cause"] == "control: retry from barcode: operator_rerun"
                         for h in rerun)


async def test_a_paused_asset_waits_and_intake_pauses_until_resumed(
    tmp_path: Path, mongo_uri: str, db: Db
) -> None:
    client, database = db
    track = client[database]["track"]
    stack = control_stack(tmp_path, mongo_uri, database)
    proc = stack.start_daemon()
    try:
        await wait_ready(stack, proc)
        ok(cli(stack, "pause", "intake", "--reason", "disk check"))
        deliver(stack.intake, "held-1")
        ok(cli(stack, "pause", "pipeline", "PIPEHERB0001"))
        assert "intake: resumed" in ok(cli(stack, "resume", "intake"))
        await until("intake took the delivery", lambda: track.count_documents({"_id": "held-1"}))
        doc = await track.find_one({"_id": "held-1"})
        assert doc is not None and all(j["attempt"] == 0 for j in doc["job_list"])
        ok(cli(stack, "pause", "asset", "held-1", "--reason", "check the label"))
        ok(cli(stack, "resume", "pipeline", "PIPEHERB0001"))
        listed = as_json(cli(stack, "ls", "--paused", "--json"))
        assert [a["guid"] for a in listed["assets"]] == ["held-1"]
        assert listed["assets"][0]["status"] == "WAITING", "a paused asset is not claimed"
        ok(cli(stack, "resume", "asset", "held-1"))
        [done] = await wait_for(client, database, ["held-1"], timeout_s=60)
    finally:
        assert stop_daemon(proc) == 0
    assert done["jobs_status"] == "DONE"
    records = await client[database]["audit"].find().sort("at", 1).to_list()
    assert [r["action"] for r in records] == [
        "pause intake", "pause pipeline", "resume intake", "pause asset", "resume pipeline",
        "resume asset"]
    assert {r["by"] for r in records} == {"alice"}
