"""Validation answers 4xx, never 500: what the store could not keep (dates beyond year 9999 in
UTC, integers beyond 64 bits, documents nested 900 deep, empty or `$`/`.` field names, file
names past the rule) is refused with 422 naming the problem, and nothing changes. The same
bounds apply to folder deliveries and the intake API (`Metadata`), see test_intake_api."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dasscod.listener.app import create_app
from dasscod.pipeline import Event, JobEvent
from dasscod.store import Stores
from dasscod.tokens import JobClaims, issue
from tests.conftest import make_metadata, make_track

SECRET = "validation-test-secret-0123456789abcd"
GUID = "valid-asset"


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    return value


def derivative(**changes: Any) -> dict[str, Any]:
    body = make_metadata(f"{GUID}-jpeg", parent_guid=GUID).model_dump(mode="json")
    body.update(changes)
    return body


CASES = [
    ("POST", f"/api/v1/assets/{GUID}/metadata", {"job": "ocr", "data": nested(900)},
     "nested deeper"),
    ("POST", f"/api/v1/assets/{GUID}/metadata", {"job": "ocr", "data": {"n": 2**64}},
     "outside 64 bits"),
    ("POST", f"/api/v1/assets/{GUID}/metadata", {"job": "ocr", "data": {"": 1}},
     "empty field name"),
    ("POST", f"/api/v1/assets/{GUID}/metadata", {"job": "ocr", "data": {"$set": 1}},
     "starts with '$'"),
    ("POST", f"/api/v1/assets/{GUID}/metadata", {"job": "ocr", "data": {"a.b": 1}},
     "holds '.'"),
    ("POST", "/api/v1/jobs/finished",
     {"asset_guid": GUID, "job": "ocr", "timestamp": "9999-12-31T23:59:59-23:59"},
     "out of range"),
    ("POST", "/api/v1/jobs/finished",
     {"asset_guid": GUID, "job": "ocr", "results": {"metadata": {"x": [[[[nested(30)]]]]}}},
     "nested deeper"),
    ("POST", "/api/v1/jobs/failed", {"asset_guid": GUID, "job": "ocr", "exit_code": 2**63},
     "less than or equal"),
    ("POST", "/api/v1/derivatives", derivative(date_asset_taken="9999-12-31T23:59:59-23:59"),
     "out of range"),
    ("POST", "/api/v1/derivatives", derivative(extra={"": {"$x": 1}}), "empty field name"),
    ("POST", f"/api/v1/assets/{GUID}/files",
     {"name": "a" * 255, "type": "jpg", "check_sum": 1, "file_size": 1.0}, "name"),
    ("POST", f"/api/v1/assets/{GUID}/files",
     {"name": "..", "type": "jpg", "check_sum": 1, "file_size": 1.0}, "name"),
    ("POST", f"/api/v1/assets/{GUID}/files",
     {"name": ".", "type": "jpg", "check_sum": 1, "file_size": 1.0}, "name"),
    ("PUT", f"/api/v1/assets/{GUID}/files/{'a' * 255}", None, "pattern"),
]


@pytest.fixture
async def client(stores: Stores, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    await stores.track.insert(make_track(GUID))
    await stores.metadata.insert(make_metadata(GUID))
    await stores.track.apply(GUID, [JobEvent("ocr", Event.CLAIM, cluster="local")],
                             cause="test")
    token = issue(SECRET, JobClaims(GUID, "ocr", 1), ttl_s=60)
    app = create_app(stores, SECRET, files_root=tmp_path / "files")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                 headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


@pytest.mark.parametrize(("method", "path", "body", "expected"), CASES,
                         ids=[f"{c[0]} {c[1][:40]} {c[3]}" for c in CASES])
async def test_what_the_store_cannot_keep_is_422(
    client: httpx.AsyncClient, stores: Stores, method: str, path: str, body: Any,
    expected: str,
) -> None:
    before = [doc async for doc in stores.db["track"].find({})]
    content = b"x" if body is None else json.dumps(body).encode()
    answer = await client.request(method, path, content=content,
                                  headers={"Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert expected in answer.text
    assert [doc async for doc in stores.db["track"].find({})] == before
