"""`POST /api/v1/assets`: the ingestion client's way in, with the folder delivery's checks and
results, over the real listener app and a real store."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dasscod.holds import INTAKE, PAUSE, Hold
from dasscod.listener.app import create_app
from dasscod.model import JobStatus, utcnow
from dasscod.pipelines import load_pipelines
from dasscod.settings import IntakeSettings
from dasscod.store import Stores
from dasscod.supervisors.intake import IntakeSupervisor
from dasscod.tokens import JobClaims, issue
from tests.integration.test_intake import meta

TOKEN = "intake-api-credential-0123456789"
SECRET = "job-token-secret-0123456789abcdefgh"
IMAGE = b"II*\x00" + bytes(range(256)) * 8


@pytest.fixture
def intake(stores: Stores, tmp_path: Path) -> IntakeSupervisor:
    settings = IntakeSettings(folder=tmp_path / "in", work_area=tmp_path / "work",
                              quarantine=tmp_path / "q", api_max_mb=0.01)
    supervisor = IntakeSupervisor(settings, stores, load_pipelines())
    for folder in (settings.folder, settings.work_area, settings.quarantine):
        folder.mkdir(parents=True)
    return supervisor


@pytest.fixture
async def client(stores: Stores, intake: IntakeSupervisor) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(stores, SECRET, intake=intake, intake_token=TOKEN, intake_max_mb=0.01)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        yield c


def upload(metadata: dict[str, Any] | str, files: dict[str, bytes] | None = None,
           token: str | None = TOKEN) -> dict[str, Any]:
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    parts = [("files", (name, data, "image/tiff"))
             for name, data in (files if files is not None else {"a.tif": IMAGE}).items()]
    return {
        "data": {"metadata": text},
        "files": parts,
        "headers": {"Authorization": f"Bearer {token}"} if token else {},
    }


async def test_an_uploaded_asset_is_registered_like_a_folder_delivery(
    client: httpx.AsyncClient, stores: Stores, intake: IntakeSupervisor
) -> None:
    answer = await client.post("/api/v1/assets", **upload(meta("api-1")))
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["asset_guid"] == "api-1"
    assert body["files"][0]["check_sum"] == zlib.crc32(IMAGE)
    track = await stores.track.get("api-1")
    assert track is not None
    assert [j.status for j in track.job_list] == [JobStatus.WAITING] * len(track.job_list)
    assert track.file_list[0].check_sum == zlib.crc32(IMAGE)
    assert (intake.work_area / "api-1" / "a.tif").read_bytes() == IMAGE
    assert await stores.metadata.get("api-1") is not None
    assert list((intake.work_area / ".incoming").iterdir()) == []


async def test_a_duplicate_guid_is_409_and_changes_nothing(
    client: httpx.AsyncClient, stores: Stores
) -> None:
    assert (await client.post("/api/v1/assets", **upload(meta("api-2")))).status_code == 201
    before = await stores.track.get("api-2")
    again = await client.post("/api/v1/assets",
                              **upload(meta("api-2", digitiser="Someone Else")))
    assert again.status_code == 409
    assert "already registered" in again.json()["detail"]
    after = await stores.track.get("api-2")
    assert before is not None and after is not None and after.version == before.version
    md = await stores.metadata.get("api-2")
    assert md is not None and md["digitiser"] == "Test Digitiser"


@pytest.mark.parametrize(
    ("metadata", "files", "expected"),
    [
        (meta("api-3", institution=""), None, "institution"),
        (meta("api-4", pipeline_name="PIPENOPE"), None, "PIPENOPE"),
        ("{not json", None, "metadata is not valid JSON"),
        (meta("api-5"), {}, "files"),
        (meta("api-6"), {"../escape.tif": IMAGE}, "file name"),
        # the rule of dasscod.filenames, the one `load` applies on the cluster
        (meta("api-6"), {"back\\slash.tif": IMAGE}, "only ASCII letters"),
        # written as {guid}.json before: 300 characters or a NUL gave a 500
        (meta("x" * 300), None, "metadata.asset_guid"),
        (meta("api\u0000nul"), None, "metadata.asset_guid"),
        (meta("api-10", date_asset_taken="9999-12-31T23:59:59-23:59"), None, "out of range"),
        (meta("api-11", tags={"": 1}), None, "empty field name"),
        (meta("api-12", tags={"$where": 1}), None, "starts with '$'"),
        (meta("api-13", extra={"a.b": 1}), None, "holds '.'"),
        (meta("api-14", big=2**64), None, "outside 64 bits"),
    ],
)
async def test_a_bad_delivery_is_422_with_the_reason_and_leaves_nothing(
    client: httpx.AsyncClient, stores: Stores, intake: IntakeSupervisor,
    metadata: dict[str, Any] | str, files: dict[str, bytes] | None, expected: str,
) -> None:
    answer = await client.post("/api/v1/assets", **upload(metadata, files))
    assert answer.status_code == 422, answer.text
    assert expected in answer.text
    assert await stores.track.collection.count_documents({}) == 0
    assert await stores.metadata.find(["api-3", "api-4", "api-5", "api-6"]) == []
    staging = intake.work_area / ".incoming"
    assert not staging.exists() or list(staging.iterdir()) == []
    assert [p.name for p in intake.work_area.iterdir() if p.name != ".incoming"] == []


async def test_too_large_is_413(client: httpx.AsyncClient, stores: Stores) -> None:
    answer = await client.post("/api/v1/assets",
                               **upload(meta("api-7"), {"big.tif": b"x" * 20_000}))
    assert answer.status_code == 413
    assert await stores.track.get("api-7") is None


@pytest.mark.parametrize("token", [None, "wrong-credential"])
async def test_without_the_intake_credential_it_is_401(
    client: httpx.AsyncClient, stores: Stores, token: str | None
) -> None:
    answer = await client.post("/api/v1/assets", **upload(meta("api-8"), token=token))
    assert answer.status_code == 401
    assert await stores.track.get("api-8") is None


async def test_a_job_token_is_not_an_intake_credential(
    client: httpx.AsyncClient, stores: Stores
) -> None:
    job_token = issue(SECRET, JobClaims("api-9", "load", 1), ttl_s=60)
    answer = await client.post("/api/v1/assets", **upload(meta("api-9"), token=job_token))
    assert answer.status_code == 401


async def test_disabled_without_a_configured_credential(stores: Stores) -> None:
    app = create_app(stores, SECRET)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        answer = await c.post("/api/v1/assets", **upload(meta("api-10")))
    assert answer.status_code == 403
    assert "DASSCOD_INTAKE__API_TOKEN" in answer.json()["detail"]


async def test_while_intake_is_paused_an_upload_is_refused_with_503_and_nothing_kept(
    client: httpx.AsyncClient, stores: Stores, intake: IntakeSupervisor
) -> None:
    intake.holds.put(Hold(PAUSE, INTAKE, by="alice", at=utcnow(), reason="disk check"))
    answer = await client.post("/api/v1/assets", **upload(meta("api-held")))
    assert answer.status_code == 503
    assert answer.json()["detail"].startswith("intake is paused (by alice at ")
    assert "disk check); deliver again once it is resumed" in answer.json()["detail"]
    assert answer.headers["Retry-After"] == "60"
    assert await stores.track.get("api-held") is None
    intake.holds.remove(PAUSE, INTAKE)
    again = await client.post("/api/v1/assets", **upload(meta("api-held")))
    assert again.status_code == 201, again.text
