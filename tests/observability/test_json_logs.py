"""Every line the daemon writes is one JSON object with the documented keys, including a
supervisor crash (a malformed document in the store) and a 500 answered by the listener."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pymongo import AsyncMongoClient

from dasscod.devstack.stack import LocalStack, deliver, stop_daemon

pytestmark = pytest.mark.e2e

ADMIN = "log-test-admin-token-0123456789"


async def test_every_line_of_a_run_with_a_crash_and_a_500_is_json(
    tmp_path: Path, mongo_uri: str
) -> None:
    database = f"logs_{uuid.uuid4().hex[:10]}"
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=database,
                       job_env={"DASSCO_TEST_FAIL_JOBS": "barcode"},
                       control_tokens={"alice": ADMIN})
    stack.write_config()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    deliver(stack.intake, "logs-err-1")
    log_file = tmp_path / "daemon.log"
    proc = stack.start_daemon(log_file)
    base = f"http://127.0.0.1:{stack.port}"
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            with anyio.fail_after(60):
                while True:
                    try:
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.2)
            # A document no version of the daemon wrote: ready for `load`, but its job list is
            # not a list, so the dispatcher that reads it crashes (and is restarted), and
            # showing it to an operator fails with a 500.
            await client[database]["track"].insert_one({
                "_id": "broken-1", "pipeline": "PIPEHERB0001", "job_list": "not a list",
                "ready": ["load"], "ready_since": None, "queues": ["status:WAITING"],
                "jobs_status": "WAITING", "version": 0,
            })
            shown = await http.get("/api/v1/control/assets/broken-1",
                                   headers={"Authorization": f"Bearer {ADMIN}"})
            assert shown.status_code == 500
            with anyio.fail_after(60):
                wanted = ("job failed for good", "supervisor crashed; restarting")
                while True:  # the daemon's log is a file: nothing to wait on but its content
                    if all(e in log_file.read_text() for e in wanted):
                        break
                    await anyio.sleep(0.2)
    finally:
        assert stop_daemon(proc) == 0
        await client.drop_database(database)
        await client.close()
    lines = log_file.read_text().splitlines()
    assert lines
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"line {number} is not JSON: {line!r}")
        assert isinstance(record, dict), line
        assert {"timestamp", "level", "event", "logger"} <= record.keys(), line
        records.append(record)
    crashes = [r for r in records if r["event"] == "supervisor crashed; restarting"]
    assert crashes and crashes[0]["supervisor"].startswith("dispatch.")
    assert "ValidationError" in crashes[0]["exception"]
    # The 500's traceback, logged by the web server through the same formatter.
    served = [r for r in records if r["logger"].startswith("uvicorn") and "exception" in r]
    assert served and served[0]["level"] == "error"
    failed = [r for r in records if r["event"].startswith("job failed for good")]
    assert failed[0]["level"] == "error"
    assert failed[0]["asset_guid"] == "logs-err-1" and failed[0]["job"] == "barcode"
    assert failed[0]["attempt"] == 3 and failed[0]["cluster"] == "local"
    assert "test failure requested" in failed[0]["error"]
    stamp = records[0]["timestamp"]
    assert stamp.endswith("Z") and time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")
