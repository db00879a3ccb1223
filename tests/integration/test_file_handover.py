"""`PUT /api/v1/assets/{guid}/files/{name}`: a derivative's bytes handed from the cluster to the
daemon, checked against the reported CRC-32 and kept where the ARS sync reads them."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from dasscod.listener.app import create_app
from dasscod.pipeline import Event, JobEvent
from dasscod.store import Stores
from dasscod.tokens import JobClaims, issue
from tests.conftest import make_metadata, make_track

SECRET = "handover-test-secret-0123456789abcdef"
DATA = b"\xff\xd8 a jpeg " * 100
PARENT, CHILD = "ho-parent", "ho-parent-jpeg"


@pytest.fixture
async def client(stores: Stores, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    await stores.track.insert(make_track(PARENT))
    await stores.metadata.insert(make_metadata(PARENT))
    # The derivatives job is running: only its live attempt may send files.
    await stores.track.apply(PARENT, [JobEvent("derivatives", Event.CLAIM, cluster="local")],
                             cause="test")
    app = create_app(stores, SECRET, files_root=tmp_path / "files")
    token = issue(SECRET, JobClaims(PARENT, "derivatives", 1), ttl_s=60)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                 headers={"Authorization": f"Bearer {token}"}) as c:
        answer = await c.post("/api/v1/derivatives", json=make_metadata(
            CHILD, parent_guid=PARENT).model_dump(mode="json"))
        assert answer.status_code == 200, answer.text
        answer = await c.post(f"/api/v1/assets/{CHILD}/files", json={
            "name": "d.jpg", "type": "jpg", "check_sum": zlib.crc32(DATA),
            "file_size": len(DATA) / 1e6, "sha256": hashlib.sha256(DATA).hexdigest()})
        assert answer.status_code == 200, answer.text
        yield c


async def test_the_file_is_kept_and_the_sync_pointed_at_it(
    client: httpx.AsyncClient, stores: Stores, tmp_path: Path
) -> None:
    answer = await client.put(f"/api/v1/assets/{CHILD}/files/d.jpg", content=DATA)
    assert answer.status_code == 200, answer.text
    kept = tmp_path / "files" / CHILD / "d.jpg"
    assert kept.read_bytes() == DATA
    track = await stores.track.get(CHILD)
    assert track is not None
    assert track.temporary_path_local == str(kept.parent)
    assert str(track.has_new_file) == "YES"  # the ARS sync uploads it from there
    again = await client.put(f"/api/v1/assets/{CHILD}/files/d.jpg", content=DATA)
    assert again.status_code == 200 and "again" in again.json()["detail"]


async def test_a_corrupted_body_is_refused_and_nothing_kept(
    client: httpx.AsyncClient, stores: Stores, tmp_path: Path
) -> None:
    answer = await client.put(f"/api/v1/assets/{CHILD}/files/d.jpg", content=DATA[:-1] + b"!")
    assert answer.status_code == 422
    assert "CRC-32" in answer.json()["detail"]
    folder = tmp_path / "files" / CHILD
    assert not folder.exists() or list(folder.iterdir()) == []
    track = await stores.track.get(CHILD)
    assert track is not None and track.temporary_path_local == ""


async def test_an_unreported_file_or_a_foreign_asset_is_refused(
    client: httpx.AsyncClient, stores: Stores
) -> None:
    unreported = await client.put(f"/api/v1/assets/{CHILD}/files/other.jpg", content=DATA)
    assert unreported.status_code == 409
    await stores.track.insert(make_track("ho-other"))
    foreign = await client.put("/api/v1/assets/ho-other/files/d.jpg", content=DATA)
    assert foreign.status_code == 403
    bad_name = await client.put(f"/api/v1/assets/{CHILD}/files/..%2Fescape", content=DATA)
    assert bad_name.status_code in (404, 422)


async def test_a_job_downloads_its_assets_files_from_the_daemon(
    client: httpx.AsyncClient, stores: Stores, tmp_path: Path
) -> None:
    # The file handed over above is now on the daemon's disk: any job of the parent may read it.
    assert (await client.put(f"/api/v1/assets/{CHILD}/files/d.jpg", content=DATA)).is_success
    answer = await client.get(f"/api/v1/assets/{CHILD}/files/d.jpg")
    assert answer.status_code == 200
    assert answer.content == DATA
    assert answer.headers["X-Check-Sum"] == str(zlib.crc32(DATA))
    assert (await client.get(f"/api/v1/assets/{CHILD}/files/nope.jpg")).status_code == 404
    await stores.track.insert(make_track("ho-foreign"))
    assert (await client.get("/api/v1/assets/ho-foreign/files/d.jpg")).status_code == 403
