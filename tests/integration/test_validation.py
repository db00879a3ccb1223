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
from dasscod.listener.invalid import MAX_ERRORS
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


FINISHED = b'{"asset_guid": "%s", "job": "ocr", "results": ' % GUID.encode()
RAW = [
    (FINISHED + b'{"metadata": {"a": 1e999999}}}', 422, "finite"),
    (FINISHED + b'{"metadata": {"a": [NaN, -Infinity]}}}', 422, "finite"),
    (FINISHED + b'{"bogus": Infinity}}', 422, "Extra inputs"),
    # 120,000 wrongly typed items: one error (the list is too long), not 120,000.
    (FINISHED + b'{"derivatives": [' + b"1," * 120_000 + b"1]}}", 422, "at most 1000"),
    (FINISHED + b'{"metadata": {"a": ' + b"9" * 5000 + b"}}}", 400, "parsing the body"),
    (b"[" * 200_000, 400, "parsing the body"),
]


@pytest.mark.parametrize(("content", "status", "expected"), RAW,
                         ids=["1e999999", "NaN", "Infinity elsewhere", "120k items",
                              "5000 digits", "200k deep"])
async def test_hostile_json_gets_a_short_4xx(
    client: httpx.AsyncClient, stores: Stores, content: bytes, status: int, expected: str,
) -> None:
    """JSON that Python reads but JSON cannot write (inf, NaN) once made the 422 itself fail
    (500); a long list of wrong items made an answer of 14 MB."""
    before = [doc async for doc in stores.db["track"].find({})]
    answer = await client.post("/api/v1/jobs/finished", content=content,
                               headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text[:500]
    assert expected in answer.text
    assert len(answer.content) < 4096
    assert [doc async for doc in stores.db["track"].find({})] == before


async def test_many_errors_are_listed_up_to_a_limit(client: httpx.AsyncClient) -> None:
    answer = await client.post(f"/api/v1/assets/{GUID}/barcode", json={
        "job": "ocr", "asset_subject": "specimen", "barcodes": [1] * 500})
    assert answer.status_code == 422
    body = answer.json()
    assert len(body["detail"]) == MAX_ERRORS and body["errors"] == 500
    assert body["detail"][0]["loc"] == ["body", "barcodes", 0]
