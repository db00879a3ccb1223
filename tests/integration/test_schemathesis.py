"""Property-based tests of the listener against its own /openapi.json (schemathesis), over
HTTP to the real server: every operation gets generated requests, valid and invalid, first
without credentials, then with a live job's token. No answer is a 5xx, and nothing changes in
the store without a valid token. Bounded examples: it runs in seconds. The counts are printed
(pytest -s) for the issue's note."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pymongo
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from dasscod.listener.app import create_app
from dasscod.pipeline import Event, JobEvent
from dasscod.pipelines import load_pipelines
from dasscod.store import Stores
from dasscod.tokens import JobClaims, issue
from tests.conftest import make_metadata, make_track
from tests.serving import serving

Db = pymongo.database.Database[dict[str, Any]]
SECRET = "schemathesis-secret-0123456789abcdefgh"
GUID = "fuzz-asset"
EXAMPLES = 12


def _serve(mongo_uri: str, database: str, files: Path, ports: queue.Queue[int],
           stop: threading.Event) -> None:
    async def main() -> None:
        stores = Stores.connect(mongo_uri, database, load_pipelines())
        await stores.ensure_indexes()
        await stores.track.insert(make_track(GUID))
        await stores.metadata.insert(make_metadata(GUID))
        await stores.track.apply(GUID, [JobEvent("derivatives", Event.CLAIM, cluster="local")],
                                 cause="test")
        app = create_app(stores, SECRET, files_root=files,
                         control_tokens={"alice": "control-token-0123456789abc"})
        async with serving(app) as port:
            ports.put(port)
            while not stop.is_set():  # noqa: ASYNC110 -- the test thread owns the event
                await anyio.sleep(0.05)
        await stores.close()

    anyio.run(main)


@pytest.fixture
def server(mongo_uri: str, tmp_path: Path) -> Iterator[tuple[str, Db]]:
    database = f"test_{uuid.uuid4().hex[:12]}"
    ports: queue.Queue[int] = queue.Queue()
    stop = threading.Event()
    thread = threading.Thread(target=_serve, daemon=True,
                              args=(mongo_uri, database, tmp_path / "files", ports, stop))
    thread.start()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
    try:
        port = ports.get(timeout=30)
        yield f"http://127.0.0.1:{port}", client[database]
    finally:
        stop.set()
        thread.join(timeout=30)
        client.drop_database(database)
        client.close()


def snapshot(db: Db) -> dict[str, list[dict[str, Any]]]:
    return {name: list(db[name].find({}).sort("_id", 1))
            for name in ("track", "metadata", "mos", "control", "audit")}


def fuzz(base_url: str, headers: dict[str, str]) -> dict[str, int]:
    """Every operation, positive and negative examples; counts by status class."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    seen = Seen()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                examples(operation, mode, base_url, headers, seen)()
            except Unsatisfiable:  # e.g. no invalid value exists for a bodiless GET
                continue
    assert seen.server_errors == []
    # The OpenAPI document declares every answer the daemon actually gives.
    assert sorted(seen.undeclared) == []
    return {"requests": seen.requests, "5xx": len(seen.server_errors)}


class Seen:
    def __init__(self) -> None:
        self.requests = 0
        self.server_errors: list[str] = []
        self.undeclared: set[str] = set()


def examples(operation: Any, mode: GenerationMode, base_url: str, headers: dict[str, str],
             seen: Seen) -> Any:
    declared = set(operation.definition.raw["responses"])

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def one(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=10)
        seen.requests += 1
        if response.status_code >= 500:
            seen.server_errors.append(f"{case.method} {case.formatted_path}: "
                                      f"{response.status_code} {response.text[:200]}")
        if str(response.status_code) not in declared:
            seen.undeclared.add(f"{case.method} {case.path}: {response.status_code}")

    return one


def test_no_5xx_and_no_change_without_a_valid_token(
    server: tuple[str, Db]
) -> None:
    base_url, db = server
    before = snapshot(db)
    anonymous = fuzz(base_url, {})
    forged = fuzz(base_url, {"Authorization": "Bearer not-a-token"})
    after = snapshot(db)
    changed = [name for name in before if before[name] != after[name]]
    print(f"schemathesis without a valid token: {anonymous['requests'] + forged['requests']} "
          f"requests, {anonymous['5xx'] + forged['5xx']} 5xx, {len(changed)} changed "
          f"collections")
    assert changed == []
    assert anonymous["requests"] > 100


def test_no_5xx_with_a_live_jobs_token(server: tuple[str, Db]) -> None:
    base_url, _ = server
    token = issue(SECRET, JobClaims(GUID, "derivatives", 1), ttl_s=600)
    counts = fuzz(base_url, {"Authorization": f"Bearer {token}"})
    print(f"schemathesis with a live job's token: {counts['requests']} requests, "
          f"{counts['5xx']} 5xx")
