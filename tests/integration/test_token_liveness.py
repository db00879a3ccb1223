"""A token only works while its job is live: the asset-level write routes check that the
token's (asset, job, attempt) is the job's live attempt and that the route is that job's
work; a stale token gets 409 (or 403) and changes nothing. Originals are never replaced
through the listener, and a derivative's bytes are checked against the SHA-256 the job
reported. Tokens live for the job's time limit plus queue time plus grace, and name their
signing key, so the secret can be rotated under running jobs."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from dasscod.cluster.configured import build_clusters
from dasscod.listener.app import create_app
from dasscod.pipeline import Event, JobEvent
from dasscod.pipelines import load_pipelines
from dasscod.services.launch import Launcher
from dasscod.settings import ClusterSettings, SecuritySettings
from dasscod.store import Stores
from dasscod.tokens import JobClaims, SigningKeys, issue
from tests.conftest import make_metadata, make_track

SECRET = "liveness-test-secret-0123456789abcdef"
GUID, CHILD = "live-asset", "live-asset-jpeg"
GOOD = b"the derivative the job made " * 50
EVIL = b"something else entirely!!!! " * 50


async def snapshot(stores: Stores) -> dict[str, list[dict[str, Any]]]:
    return {name: [doc async for doc in stores.db[name].find({}).sort("_id", 1)]
            for name in ("track", "metadata", "mos")}


def auth(job: str, attempt: int = 1) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue(SECRET, JobClaims(GUID, job, attempt), ttl_s=60)}"}


async def claim(stores: Stores, job: str) -> None:
    await stores.track.apply(GUID, [JobEvent(job, Event.CLAIM, cluster="local")], cause="test")


async def finish(stores: Stores, job: str, attempt: int = 1) -> None:
    await stores.track.apply(GUID, [JobEvent(job, Event.FINISHED, attempt=attempt)],
                             cause="test")


def file_report(data: bytes, *, crc_of: bytes | None = None, **changes: Any) -> dict[str, Any]:
    body = {"name": f"{CHILD}.jpg", "type": "jpg", "check_sum": zlib.crc32(crc_of or data),
            "file_size": len(data) / 1e6, "sha256": hashlib.sha256(data).hexdigest()}
    body.update(changes)
    return body


def derivative() -> dict[str, Any]:
    return make_metadata(CHILD, parent_guid=GUID, file_format="jpeg").model_dump(mode="json")


@pytest.fixture
async def client(stores: Stores, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    await stores.track.insert(make_track(GUID))
    await stores.metadata.insert(make_metadata(GUID))
    app = create_app(stores, SECRET, files_root=tmp_path / "files")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        yield c


def writes(job: str) -> list[tuple[str, str, Any]]:
    """Every asset-level write a job's token could try."""
    return [
        ("POST", f"/api/v1/assets/{GUID}/ready", None),
        ("POST", f"/api/v1/assets/{GUID}/clean-up", None),
        ("POST", f"/api/v1/assets/{GUID}/derivative-failed", {"note": "x"}),
        ("POST", "/api/v1/derivatives", derivative()),
        ("POST", f"/api/v1/assets/{CHILD}/files", file_report(GOOD)),
        ("POST", f"/api/v1/assets/{CHILD}/derivative-uploaded", None),
    ]


async def send(client: httpx.AsyncClient, method: str, path: str, body: Any,
               headers: dict[str, str]) -> httpx.Response:
    return await client.request(method, path, json=body, headers=headers)


async def test_tokens_of_ended_or_replaced_attempts_change_nothing(
    client: httpx.AsyncClient, stores: Stores, tmp_path: Path
) -> None:
    # The derivatives job ran, registered its derivative and file, and finished.
    await claim(stores, "derivatives")
    for method, path, body in writes("derivatives")[3:5]:
        answer = await send(client, method, path, body, auth("derivatives"))
        assert answer.status_code == 200, answer.text
    await finish(stores, "derivatives")
    await claim(stores, "load")
    await finish(stores, "load")
    before = await snapshot(stores)
    for job in ("derivatives", "load"):
        for method, path, body in writes(job):
            answer = await send(client, method, path, body, auth(job))
            assert answer.status_code == 409, (job, path, answer.text)
            assert "no longer changes anything" in answer.json()["detail"]
    put = await client.put(f"/api/v1/assets/{CHILD}/files/{CHILD}.jpg", content=GOOD,
                           headers=auth("derivatives"))
    assert put.status_code == 409
    # A token of an attempt that was replaced by a retry.
    answer = await send(client, "POST", f"/api/v1/assets/{GUID}/ready", None, auth("load", 2))
    assert answer.status_code == 409
    assert await snapshot(stores) == before
    assert not (tmp_path / "files").exists() or not any((tmp_path / "files").rglob("*.jpg"))


async def test_a_route_belongs_to_its_job(client: httpx.AsyncClient, stores: Stores) -> None:
    await claim(stores, "ocr")
    await claim(stores, "load")
    before = await snapshot(stores)
    for job, (method, path, body) in [
        ("ocr", ("POST", "/api/v1/derivatives", derivative())),
        ("ocr", ("POST", f"/api/v1/assets/{GUID}/derivative-failed", {"note": "x"})),
        ("ocr", ("POST", f"/api/v1/assets/{GUID}/ready", None)),
        ("load", ("POST", f"/api/v1/assets/{GUID}/clean-up", None)),
    ]:
        answer = await send(client, method, path, body, auth(job))
        assert answer.status_code == 403, (job, path, answer.text)
    assert await snapshot(stores) == before
    assert (await send(client, "POST", f"/api/v1/assets/{GUID}/ready", None,
                       auth("load"))).status_code == 200


async def test_originals_are_never_replaced_and_derivatives_are_checked_by_sha256(
    client: httpx.AsyncClient, stores: Stores, tmp_path: Path
) -> None:
    await claim(stores, "derivatives")
    headers = auth("derivatives")
    # The original's files come from intake; no job adds to or replaces them.
    answer = await send(client, "POST", f"/api/v1/assets/{GUID}/files", file_report(GOOD),
                        headers)
    assert answer.status_code == 403 and "original" in answer.json()["detail"]
    put = await client.put(f"/api/v1/assets/{GUID}/files/{GUID}.tif", content=EVIL,
                           headers=headers)
    assert put.status_code == 403
    # A derivative reported with the SHA-256 of GOOD but a CRC-32 that EVIL matches (a
    # forged CRC): the bytes of EVIL are refused on their SHA-256.
    assert (await send(client, "POST", "/api/v1/derivatives", derivative(),
                       headers)).status_code == 200
    report = file_report(GOOD, crc_of=EVIL)
    assert (await send(client, "POST", f"/api/v1/assets/{CHILD}/files", report,
                       headers)).status_code == 200
    put = await client.put(f"/api/v1/assets/{CHILD}/files/{CHILD}.jpg", content=EVIL,
                           headers=headers)
    assert put.status_code == 422 and "SHA-256" in put.json()["detail"]
    assert not any((tmp_path / "files").rglob("*.jpg"))
    child = await stores.track.get(CHILD)
    assert child is not None and not child.temporary_path_local


async def test_a_file_reported_without_sha256_cannot_be_sent(
    client: httpx.AsyncClient, stores: Stores
) -> None:
    await claim(stores, "derivatives")
    headers = auth("derivatives")
    assert (await send(client, "POST", "/api/v1/derivatives", derivative(),
                       headers)).status_code == 200
    report = file_report(GOOD, sha256=None)
    assert (await send(client, "POST", f"/api/v1/assets/{CHILD}/files", report,
                       headers)).status_code == 200
    put = await client.put(f"/api/v1/assets/{CHILD}/files/{CHILD}.jpg", content=GOOD,
                           headers=headers)
    assert put.status_code == 422 and "without a SHA-256" in put.json()["detail"]


async def test_a_token_lives_for_the_time_limit_plus_queue_plus_grace(
    stores: Stores, tmp_path: Path
) -> None:
    pipelines = load_pipelines()
    clusters = build_clusters({"local": ClusterSettings(work_root=tmp_path / "w",
                                                         state_dir=tmp_path / "s")})
    launcher = Launcher(stores=stores, clusters=clusters, pipelines=pipelines,
                        callback_base="http://127.0.0.1:9/api/v1",
                        token_secret=SigningKeys("k7", SECRET), token_ttl_s=7 * 24 * 3600,
                        token_queue_s=2000, token_grace_s=120)
    await stores.track.insert(make_track(GUID))
    await claim(stores, "load")
    track = await stores.track.get(GUID)
    assert track is not None
    token = launcher.job_spec(track, "load").env["DASSCO_TOKEN"]
    claims = jwt.decode(token, options={"verify_signature": False})
    limit = pipelines[track.pipeline].spec("load").time_limit_s
    assert claims["exp"] - claims["iat"] == limit + 2000 + 120
    assert jwt.get_unverified_header(token)["kid"] == "k7"


async def test_the_secret_rotates_without_failing_running_jobs(stores: Stores) -> None:
    await stores.track.insert(make_track(GUID))
    await stores.metadata.insert(make_metadata(GUID))
    old = SigningKeys("k1", SECRET)
    running_job = issue(old, JobClaims(GUID, "load", 1), ttl_s=60)
    new_secret = "rotated-secret-0123456789abcdefghijkl"
    settings = SecuritySettings.model_validate(
        {"token_secret": new_secret, "token_kid": "k2", "previous_secrets": {"k1": SECRET}})
    rotated = settings.keys()
    for keys, expected in ((rotated, 200), (SigningKeys("k2", new_secret), 401)):
        app = create_app(stores, keys)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            answer = await c.get(f"/api/v1/assets/{GUID}/metadata",
                                 headers={"Authorization": f"Bearer {running_job}"})
            assert answer.status_code == expected, answer.text
    new_job = issue(rotated, JobClaims(GUID, "load", 1), ttl_s=60)
    assert jwt.get_unverified_header(new_job)["kid"] == "k2"
    with pytest.raises(ValueError, match="needs a new key id"):
        SecuritySettings.model_validate(
            {"token_secret": new_secret, "token_kid": "k1", "previous_secrets": {"k1": SECRET}})
