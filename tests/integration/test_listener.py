"""The embedded listener over HTTP (ASGI) against a real MongoDB-wire server.

Every refused request (401/403/404/422) must leave the `track`, `metadata` and `mos`
collections exactly as they were.

The `CallbackService` tests at the end check the same rules below the HTTP layer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest

from dasscod.listener.app import create_app
from dasscod.model import AssetType, FileEntry, Flag, JobStatus, utcnow
from dasscod.pipeline import Event, JobEvent
from dasscod.pipelines import load_pipelines
from dasscod.protocol.callbacks import (
    BarcodeResult,
    FailedCallback,
    FinishedCallback,
    JobResults,
    StartedCallback,
)
from dasscod.services.callbacks import CallbackRejected, CallbackService
from dasscod.store import Stores
from dasscod.tokens import JobClaims, issue
from tests.conftest import make_metadata, make_track

S = JobStatus
SECRET = "listener-test-secret-0123456789abcdef"
A = "asset-a"  # HERB0001, load claimed (STARTING, attempt 1)
B = "asset-b"  # another asset of the same pipeline, untouched
C = "asset-c"  # a track without metadata
GONE = "asset-gone"  # not tracked at all
DERIVATIVE = "asset-a-crop"

COLLECTIONS = ("track", "metadata", "mos")
CALLBACK_PATHS = {
    "/api/v1/jobs/queued",
    "/api/v1/jobs/started",
    "/api/v1/jobs/finished",
    "/api/v1/jobs/failed",
    "/api/v1/assets/{guid}/ready",
    "/api/v1/assets/{guid}/barcode",
    "/api/v1/assets/{guid}/metadata",
    "/api/v1/assets/{guid}/links",
    "/api/v1/derivatives",
    "/api/v1/assets/{guid}/files",
    "/api/v1/assets/{guid}/derivative-uploaded",
    "/api/v1/assets/{guid}/derivative-failed",
    "/api/v1/assets/{guid}/clean-up",
}


# --------------------------------------------------------------------------- fixtures, helpers


@pytest.fixture
async def world(stores: Stores) -> Stores:
    for guid in (A, B):
        await stores.track.insert(make_track(guid))
        await stores.metadata.insert(make_metadata(guid))
    await stores.track.insert(make_track(C))
    await stores.track.apply(A, [JobEvent("load", Event.CLAIM, cluster="local")], cause="test")
    return stores


@pytest.fixture
async def client(world: Stores) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(world, SECRET)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def token(guid: str = A, job: str = "load", attempt: int = 1, **kw: Any) -> str:
    secret = kw.get("secret", SECRET)
    return issue(secret, JobClaims(guid, job, attempt), ttl_s=kw.get("ttl_s", 600))


def auth(guid: str = A, job: str = "load", attempt: int = 1) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(guid, job, attempt)}"}


async def snapshot(stores: Stores) -> dict[str, list[dict[str, Any]]]:
    state: dict[str, list[dict[str, Any]]] = {}
    for name in COLLECTIONS:
        state[name] = [doc async for doc in stores.db[name].find({}).sort("_id", 1)]
    return state


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: Any = None
    raw: bytes | None = None

    async def send(
        self, client: httpx.AsyncClient, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        if self.raw is not None:
            headers = {**(headers or {}), "Content-Type": "application/json"}
            return await client.request(self.method, self.path, content=self.raw, headers=headers)
        return await client.request(self.method, self.path, json=self.body, headers=headers)


def derivative_body(parent: str, guid: str = DERIVATIVE, **changes: object) -> dict[str, Any]:
    body: dict[str, Any] = make_metadata(guid, parent_guid=parent, file_format="jpeg").model_dump(
        mode="json"
    )
    body.update(changes)
    return body


def calls(guid: str, job: str, **extra: object) -> dict[str, Call]:
    """One valid request per route, for asset `guid` and job `job`."""
    job_body = {"asset_guid": guid, "job": job, **extra}
    base = f"/api/v1/assets/{guid}"
    return {
        "queued": Call("POST", "/api/v1/jobs/queued", {**job_body, "hpc_job_id": "101"}),
        "started": Call("POST", "/api/v1/jobs/started", job_body),
        "finished": Call(
            "POST", "/api/v1/jobs/finished", {**job_body, "results": {"asset_ready": True}}
        ),
        "failed": Call("POST", "/api/v1/jobs/failed", {**job_body, "reason": "boom"}),
        "ready": Call("POST", f"{base}/ready"),
        "barcode": Call(
            "POST",
            f"{base}/barcode",
            {"job": job, "asset_subject": "specimen", "barcodes": ["C1001"]},
        ),
        "metadata-update": Call(
            "POST", f"{base}/metadata", {"job": job, "data": {"label_text": "Flora"}}
        ),
        "metadata-read": Call("GET", f"{base}/metadata"),
        "links": Call("GET", f"{base}/links"),
        "derivative": Call("POST", "/api/v1/derivatives", derivative_body(guid)),
        "file": Call(
            "POST",
            f"{base}/files",
            {"name": "crop.jpg", "type": "jpg", "check_sum": 12345, "file_size": 0.5},
        ),
        "derivative-uploaded": Call("POST", f"{base}/derivative-uploaded"),
        "derivative-failed": Call("POST", f"{base}/derivative-failed", {"ppi": 300, "note": "x"}),
        "clean-up": Call("POST", f"{base}/clean-up"),
    }


ROUTES = list(calls(A, "load"))


async def assert_refused(
    stores: Stores,
    client: httpx.AsyncClient,
    call: Call,
    headers: dict[str, str] | None,
    status: int,
) -> httpx.Response:
    before = await snapshot(stores)
    response = await call.send(client, headers)
    assert response.status_code == status, response.text
    assert await snapshot(stores) == before
    return response


# --------------------------------------------------------------------------- 401


BAD_TOKENS = {
    "none": None,
    "garbage": {"Authorization": "Bearer not.a.token"},
    "expired": {"Authorization": f"Bearer {token(ttl_s=-5)}"},
    "wrong-secret": {
        "Authorization": f"Bearer {token(secret='some-other-secret-0123456789abcdef')}"
    },
    "basic-scheme": {"Authorization": f"Basic {token()}"},
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
@pytest.mark.parametrize("route", ROUTES)
async def test_without_a_valid_token_every_route_is_401(
    world: Stores, client: httpx.AsyncClient, route: str, kind: str
) -> None:
    response = await assert_refused(world, client, calls(A, "load")[route], BAD_TOKENS[kind], 401)
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["detail"]


# --------------------------------------------------------------------------- 403


def forbidden_cases() -> list[Any]:
    other_asset = calls(B, "load")
    cases: list[Any] = [
        pytest.param(other_asset[r], (A, "load"), id=f"{r}-other-asset")
        for r in ROUTES
        if r != "derivative"
    ]
    cases += [
        pytest.param(other_asset["derivative"], (A, "load"), id="derivative-other-parent"),
        pytest.param(calls(A, "barcode")["started"], (A, "load"), id="started-other-job"),
        pytest.param(calls(A, "barcode")["finished"], (A, "load"), id="finished-other-job"),
        pytest.param(calls(A, "load", attempt=2)["finished"], (A, "load"), id="other-attempt"),
        pytest.param(calls(A, "ocr")["barcode"], (A, "barcode"), id="barcode-other-job"),
        pytest.param(calls(A, "ocr")["metadata-update"], (A, "load"), id="metadata-other-job"),
    ]
    return cases


@pytest.mark.parametrize(("call", "who"), forbidden_cases())
async def test_a_token_for_something_else_is_403(
    world: Stores, client: httpx.AsyncClient, call: Call, who: tuple[str, str]
) -> None:
    response = await assert_refused(world, client, call, auth(*who), 403)
    assert response.json()["detail"]


# --------------------------------------------------------------------------- 404


def not_found_cases() -> list[Any]:
    job_of_route = {"barcode": "barcode"}
    cases: list[Any] = []
    for r in ROUTES:
        job = job_of_route.get(r, "load")
        cases.append(pytest.param(calls(GONE, job)[r], (GONE, job), id=f"{r}-unknown-asset"))
    cases.append(pytest.param(calls(C, "load")["metadata-read"], (C, "load"), id="no-metadata"))
    cases.append(
        pytest.param(calls(A, "nojob")["finished"], (A, "nojob"), id="finished-unknown-job")
    )
    cases += [
        pytest.param(
            calls(A, "nojob")[r], (A, "nojob"), id=f"{r}-unknown-job"
        )
        for r in ("queued", "started", "failed")
    ]
    return cases


@pytest.mark.parametrize(("call", "who"), not_found_cases())
async def test_an_unknown_asset_or_job_is_404(
    world: Stores, client: httpx.AsyncClient, call: Call, who: tuple[str, str]
) -> None:
    response = await assert_refused(world, client, call, auth(*who), 404)
    assert response.json()["detail"]


# --------------------------------------------------------------------------- 422


def invalid_cases() -> list[Any]:
    a = f"/api/v1/assets/{A}"
    load = {"asset_guid": A, "job": "load"}
    cases: list[tuple[str, Call, tuple[str, str], list[Any]]] = [
        (
            "queued-missing-id",
            Call("POST", "/api/v1/jobs/queued", load),
            (A, "load"),
            ["body", "hpc_job_id"],
        ),
        (
            "started-wrong-type",
            Call("POST", "/api/v1/jobs/started", {**load, "attempt": "two"}),
            (A, "load"),
            ["body", "attempt"],
        ),
        (
            "started-unknown-field",
            Call("POST", "/api/v1/jobs/started", {**load, "colour": 1}),
            (A, "load"),
            ["body", "colour"],
        ),
        (
            "started-bad-guid",
            Call("POST", "/api/v1/jobs/started", {**load, "asset_guid": "bad guid!"}),
            (A, "load"),
            ["body", "asset_guid"],
        ),
        (
            "finished-wrong-type",
            Call("POST", "/api/v1/jobs/finished", {**load, "results": {"asset_ready": "maybe"}}),
            (A, "load"),
            ["body", "results", "asset_ready"],
        ),
        (
            "finished-unknown-result",
            Call("POST", "/api/v1/jobs/finished", {**load, "results": {"colour": "red"}}),
            (A, "load"),
            ["body", "results", "colour"],
        ),
        (
            "failed-negative-time",
            Call("POST", "/api/v1/jobs/failed", {**load, "run_time_s": -1}),
            (A, "load"),
            ["body", "run_time_s"],
        ),
        (
            "failed-missing-guid",
            Call("POST", "/api/v1/jobs/failed", {"job": "load"}),
            (A, "load"),
            ["body", "asset_guid"],
        ),
        (
            "barcode-bad-subject",
            Call("POST", f"{a}/barcode", {"job": "barcode", "asset_subject": "tree"}),
            (A, "barcode"),
            ["body", "asset_subject"],
        ),
        (
            "barcode-missing-subject",
            Call("POST", f"{a}/barcode", {"job": "barcode"}),
            (A, "barcode"),
            ["body", "asset_subject"],
        ),
        (
            "file-checksum-too-big",
            Call(
                "POST",
                f"{a}/files",
                {"name": "x.jpg", "type": "jpg", "check_sum": 2**32, "file_size": 1},
            ),
            (A, "load"),
            ["body", "check_sum"],
        ),
        (
            "file-name-with-slash",
            Call(
                "POST",
                f"{a}/files",
                {"name": "../x.jpg", "type": "jpg", "check_sum": 1, "file_size": 1},
            ),
            (A, "load"),
            ["body", "name"],
        ),
        (
            "derivative-missing-field",
            Call(
                "POST",
                "/api/v1/derivatives",
                {k: v for k, v in derivative_body(A).items() if k != "institution"},
            ),
            (A, "load"),
            ["body", "institution"],
        ),
        (
            "derivative-failed-wrong-type",
            Call("POST", f"{a}/derivative-failed", {"ppi": "many"}),
            (A, "load"),
            ["body", "ppi"],
        ),
        (
            "bad-guid-in-path",
            Call("POST", "/api/v1/assets/bad$guid/ready"),
            (A, "load"),
            ["path", "guid"],
        ),
    ]
    params = [pytest.param(call, who, loc, id=name) for name, call, who, loc in cases]
    # JSON that does not parse is refused before the token is looked at.
    params.append(
        pytest.param(
            Call("POST", "/api/v1/jobs/started", raw=b"{not json"),
            (A, "load"),
            ["body", 1],
            id="not-json",
        )
    )
    return params


@pytest.mark.parametrize(("call", "who", "loc"), invalid_cases())
async def test_an_invalid_body_is_422_naming_the_field(
    world: Stores, client: httpx.AsyncClient, call: Call, who: tuple[str, str], loc: list[Any]
) -> None:
    response = await assert_refused(world, client, call, auth(*who), 422)
    assert [error["loc"] for error in response.json()["detail"]] == [loc]


@pytest.mark.parametrize("field", ["asset_guid", "parent_guid", "pipeline_name"])
async def test_a_job_may_not_overwrite_identity_metadata(
    world: Stores, client: httpx.AsyncClient, field: str
) -> None:
    call = Call("POST", f"/api/v1/assets/{A}/metadata", {"job": "load", "data": {field: "x"}})
    response = await assert_refused(world, client, call, auth(A, "load"), 422)
    assert field in response.json()["detail"]


# --------------------------------------------------------------------------- happy paths


async def test_started_moves_the_job_to_running(world: Stores, client: httpx.AsyncClient) -> None:
    at = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    body = {"asset_guid": A, "job": "load", "hpc_job_id": "4711", "timestamp": at.isoformat()}
    response = await client.post("/api/v1/jobs/started", json=body, headers=auth())
    assert response.status_code == 200
    assert response.json() == {"applied": True, "status": "RUNNING", "detail": None}
    job = (await world.track.get(A)).job("load")  # type: ignore[union-attr]
    assert (job.status, job.hpc_job_id, job.job_start_time) == (S.RUNNING, "4711", at)


async def test_finished_completes_the_job_and_makes_the_next_one_ready(
    world: Stores, client: httpx.AsyncClient
) -> None:
    job_body = {"asset_guid": A, "job": "load", "attempt": 1}
    steps: list[tuple[str, dict[str, Any]]] = [
        ("queued", {"hpc_job_id": "4711"}),
        ("started", {}),
        ("finished", {"run_time_s": 12.5, "results": {"asset_ready": True}}),
    ]
    for path, extra in steps:
        response = await client.post(
            f"/api/v1/jobs/{path}", json={**job_body, **extra}, headers=auth()
        )
        assert response.status_code == 200, response.text
        assert response.json()["applied"] is True
    assert response.json()["status"] == "DONE"
    track = await world.track.get(A)
    assert track is not None
    assert track.job("load").status is S.DONE
    assert track.job("load").run_time_s == 12.5
    assert track.hpc_ready is Flag.YES
    assert track.ready == ["barcode"]
    assert [(h.job, h.from_, h.to) for h in track.history] == [
        ("load", "WAITING", "STARTING"),
        ("load", "STARTING", "QUEUED"),
        ("load", "QUEUED", "RUNNING"),
        (None, "NO", "YES"),
        ("load", "RUNNING", "DONE"),
    ]


async def test_a_duplicate_finished_is_acknowledged_and_changes_nothing(
    world: Stores, client: httpx.AsyncClient
) -> None:
    call = calls(A, "load")["finished"]
    first = await call.send(client, auth())
    assert first.json()["applied"] is True
    before = await snapshot(world)
    again = await call.send(client, auth())
    assert again.status_code == 200
    assert again.json()["applied"] is False
    assert again.json()["status"] == "DONE"
    assert await snapshot(world) == before
    track = await world.track.get(A)
    assert track is not None
    assert sum(1 for h in track.history if h.to == "DONE") == 1


async def test_a_callback_of_a_stale_attempt_is_acknowledged_and_ignored(
    world: Stores, client: httpx.AsyncClient
) -> None:
    now = utcnow()
    await world.track.apply(A, [JobEvent("load", Event.LOST)], cause="test", now=now)
    later = now + timedelta(hours=2)
    await world.track.apply(A, [JobEvent("load", Event.RETRY_DUE)], cause="test", now=later)
    await world.track.apply(A, [JobEvent("load", Event.CLAIM)], cause="test", now=later)
    before = await snapshot(world)
    body = {"asset_guid": A, "job": "load", "results": {"metadata": {"label_text": "old"}}}
    response = await client.post("/api/v1/jobs/finished", json=body, headers=auth(attempt=1))
    assert response.status_code == 200
    assert response.json()["applied"] is False
    assert "stale attempt" in response.json()["detail"]
    assert await snapshot(world) == before


async def test_failed_schedules_a_retry(world: Stores, client: httpx.AsyncClient) -> None:
    body = {"asset_guid": A, "job": "load", "reason": "out of memory", "exit_code": 137}
    response = await client.post("/api/v1/jobs/failed", json=body, headers=auth())
    assert response.status_code == 200
    assert response.json()["status"] == "RETRY"
    job = (await world.track.get(A)).job("load")  # type: ignore[union-attr]
    assert job.last_error == "out of memory (exit 137)"
    assert job.exit_state == "EXIT_137"
    assert job.not_before is not None and job.not_before > utcnow()


@pytest.mark.parametrize(("ran_s", "exit_state"), [(60, "EXIT_143"), (1800, "TIMEOUT")])
async def test_a_sigterm_at_the_time_limit_is_recorded_as_a_timeout(
    world: Stores, client: httpx.AsyncClient, ran_s: int, exit_state: str
) -> None:
    limit_s = world.track.pipelines["PIPEHERB0001"].spec("load").time_limit_s
    assert limit_s == 1800  # HERB0001's load; the parameters are chosen around it
    at = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    job_body = {"asset_guid": A, "job": "load"}
    started = {**job_body, "timestamp": at.isoformat()}
    assert (await client.post("/api/v1/jobs/started", json=started, headers=auth())).is_success
    failed = {**job_body, "reason": "terminated by signal", "exit_code": 143,
              "timestamp": (at + timedelta(seconds=ran_s)).isoformat()}
    response = await client.post("/api/v1/jobs/failed", json=failed, headers=auth())
    assert response.status_code == 200
    job = (await world.track.get(A)).job("load")  # type: ignore[union-attr]
    assert job.exit_state == exit_state
    if exit_state == "TIMEOUT":
        assert job.last_error == (
            "stopped at its time limit of 1800 s (SIGTERM from the scheduler)")
    else:
        assert job.last_error == "terminated by signal (exit 143)"  # a cancel, say


async def at_barcode(stores: Stores) -> None:
    """Asset A with load done and barcode claimed (attempt 1)."""
    await stores.track.apply(A, [JobEvent("load", Event.FINISHED, attempt=1)], cause="test")
    await stores.track.apply(A, [JobEvent("barcode", Event.CLAIM)], cause="test")


async def test_a_device_target_cancels_the_rest_of_the_pipeline(
    world: Stores, client: httpx.AsyncClient
) -> None:
    await at_barcode(world)
    body = {"job": "barcode", "asset_subject": "device target", "barcodes": ["DT-1"]}
    response = await client.post(
        f"/api/v1/assets/{A}/barcode", json=body, headers=auth(A, "barcode")
    )
    assert response.status_code == 200, response.text
    await assert_device_target_stopped(world)


async def test_a_metadata_result_is_merged_and_ends_the_job(
    world: Stores, client: httpx.AsyncClient
) -> None:
    body = {"job": "load", "data": {"label_text": "Flora Danica", "tags": {"ocr": "v1"}}}
    response = await client.post(f"/api/v1/assets/{A}/metadata", json=body, headers=auth())
    assert response.status_code == 200
    assert response.json() == {"applied": True, "status": "DONE", "detail": None}
    meta = await world.metadata.get(A)
    assert meta is not None
    assert meta["label_text"] == "Flora Danica"
    assert meta["tags"] == {"ocr": "v1"}
    assert meta["metadata_updated_by"] == "dasscod:load"
    track = await world.track.get(A)
    assert track is not None and track.update_metadata is Flag.YES


async def test_reads_of_metadata_and_links(world: Stores, client: httpx.AsyncClient) -> None:
    meta = await client.get(f"/api/v1/assets/{A}/metadata", headers=auth())
    assert meta.status_code == 200
    assert meta.json()["asset_guid"] == A
    assert meta.json()["institution"] == "NHMD"
    assert meta.json()["date_asset_taken"] == "2024-10-05T08:00:00+00:00"
    assert "_id" not in meta.json()

    # An original's files come from intake (never from a job): recorded directly here.
    assert await world.track.add_file(A, FileEntry(name="a.tif", type="tif",
                                                   check_sum=3_000_000_000, file_size=12.5),
                                      cause="test")
    links = await client.get(f"/api/v1/assets/{A}/links", headers=auth())
    assert links.status_code == 200
    assert links.json() == {
        "asset_guid": A,
        "files": [
            {
                "name": "a.tif",
                "type": "tif",
                "check_sum": 3_000_000_000,
                "file_size": 12.5,
                "ars_link": "",
                "local_path": None,
            }
        ],
    }


async def test_a_derivative_is_registered_once_and_readable_by_its_parents_job(
    world: Stores, client: httpx.AsyncClient
) -> None:
    await world.track.apply(A, [JobEvent("derivatives", Event.CLAIM, cluster="local")],
                            cause="test")
    call = Call("POST", "/api/v1/derivatives", derivative_body(A))
    first = await call.send(client, auth(job="derivatives"))
    assert first.status_code == 200
    assert first.json()["applied"] is True
    before = await snapshot(world)
    second = await call.send(client, auth(job="derivatives"))
    assert second.json()["applied"] is False
    assert await snapshot(world) == before
    derivative = await world.track.get(DERIVATIVE)
    assert derivative is not None and derivative.parent_guid == A
    read = await client.get(f"/api/v1/assets/{DERIVATIVE}/metadata", headers=auth())
    assert read.status_code == 200
    assert read.json()["parent_guid"] == A


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_when_mongodb_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_readyz_when_mongodb_does_not_answer() -> None:
    unreachable = Stores.connect(
        "mongodb://127.0.0.1:9/?directConnection=true", "x", load_pipelines(), timeout_s=0.2
    )
    try:
        app = create_app(unreachable, SECRET)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            response = await c.get("/readyz")
    finally:
        await unreachable.close()
    assert response.status_code == 503


async def test_openapi_lists_the_callback_paths(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert set(paths) >= CALLBACK_PATHS
    started = paths["/api/v1/jobs/started"]["post"]
    assert started["security"] == [{"HTTPBearer": []}]
    assert all(p["in"] != "query" for p in started.get("parameters", []))


# --------------------------------------------------------------------------- CallbackService


@pytest.fixture
def service(world: Stores) -> CallbackService:
    return CallbackService(world)


async def assert_device_target_stopped(stores: Stores) -> None:
    track = await stores.track.get(A)
    assert track is not None
    assert {j.name: j.status for j in track.job_list} == {
        "load": S.DONE,
        "barcode": S.DONE,
        "ocr": S.STOPPED,
        "derivatives": S.STOPPED,
        "upload": S.STOPPED,
        "clean_up": S.STOPPED,
    }
    assert track.jobs_status is S.DONE
    assert track.asset_type is AssetType.DEVICE_TARGET
    assert track.update_metadata is Flag.YES
    assert track.ready == [] and track.in_flight is False
    meta = await stores.metadata.get(A)
    assert meta is not None
    assert (meta["asset_subject"], meta["barcode"]) == ("device target", ["DT-1"])


async def test_service_device_target_cancels_the_rest(
    world: Stores, service: CallbackService
) -> None:
    await at_barcode(world)
    result = BarcodeResult(asset_subject="device target", barcodes=["DT-1"])
    ack = await service.barcode(JobClaims(A, "barcode", 1), result, "DONE")
    assert (ack.applied, ack.status) == (True, "DONE")
    await assert_device_target_stopped(world)
    again = await service.barcode(JobClaims(A, "barcode", 1), result, "DONE")
    assert again.applied is False


async def test_service_started_finished_and_duplicate(
    world: Stores, service: CallbackService
) -> None:
    who = JobClaims(A, "load", 1)
    started = await service.started(who, StartedCallback(asset_guid=A, job="load"))
    assert (started.applied, started.status) == (True, "RUNNING")
    body = FinishedCallback(asset_guid=A, job="load", results=JobResults(asset_ready=True))
    finished = await service.finished(who, body)
    assert (finished.applied, finished.status) == (True, "DONE")
    before = await snapshot(world)
    duplicate = await service.finished(who, body)
    assert (duplicate.applied, duplicate.status) == (False, "DONE")
    assert await snapshot(world) == before
    track = await world.track.get(A)
    assert track is not None
    assert track.ready == ["barcode"] and track.hpc_ready is Flag.YES


async def test_service_unknown_asset_is_404_and_writes_nothing(
    world: Stores, service: CallbackService
) -> None:
    before = await snapshot(world)
    who = JobClaims(GONE, "load", 1)
    for call in (
        service.started(who, StartedCallback(asset_guid=GONE, job="load")),
        service.finished(who, FinishedCallback(asset_guid=GONE, job="load")),
        service.asset_ready(who),
    ):
        with pytest.raises(CallbackRejected) as info:
            await call
        assert info.value.status_code == 404
    assert await snapshot(world) == before


async def test_service_protected_metadata_is_422_and_writes_nothing(
    world: Stores, service: CallbackService
) -> None:
    before = await snapshot(world)
    with pytest.raises(CallbackRejected) as info:
        await service.metadata_update(JobClaims(A, "load", 1), {"pipeline_name": "X"}, "DONE")
    assert info.value.status_code == 422
    assert "pipeline_name" in info.value.detail
    assert await snapshot(world) == before


async def test_service_started_for_an_unknown_job_is_404(
    world: Stores, service: CallbackService
) -> None:
    before = await snapshot(world)
    with pytest.raises(CallbackRejected) as info:
        await service.started(JobClaims(A, "nojob", 1), StartedCallback(asset_guid=A, job="nojob"))
    assert info.value.status_code == 404
    assert await snapshot(world) == before


class RecordingSlots:
    """Records which job ends were reported, and whether one is still being written."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, str]] = []
        self.open = 0

    @contextmanager
    def ending(self, guid: str, job: str) -> Iterator[None]:
        self.ended.append((guid, job))
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1


async def test_service_frees_the_slot_while_the_end_of_the_current_attempt_is_written(
    world: Stores,
) -> None:
    slots = RecordingSlots()
    service = CallbackService(world, slots)
    who = JobClaims(A, "load", 1)
    await service.started(who, StartedCallback(asset_guid=A, job="load"))
    body = FinishedCallback(asset_guid=A, job="load", results=JobResults(asset_ready=True))
    assert (await service.finished(who, body)).applied
    assert slots.ended == [(A, "load")] and slots.open == 0
    # A duplicate, or a failure reported for an attempt that already ended, frees nothing.
    assert not (await service.finished(who, body)).applied
    late = FailedCallback(asset_guid=A, job="load", reason="late")
    assert not (await service.failed(who, late)).applied
    assert slots.ended == [(A, "load")]


async def test_a_flood_of_readyz_is_one_ping(world: Stores) -> None:
    """/readyz is open to anyone: 200 at once (MongoDB up, then down) cost one ping each
    time, not 200."""
    unreachable = Stores.connect(
        "mongodb://127.0.0.1:9/?directConnection=true", "x", load_pipelines(), timeout_s=0.2
    )
    try:
        for stores, status in ((world, 200), (unreachable, 503)):
            pings = 0
            real_ping = stores.ping

            async def counted(real: Any = real_ping) -> Any:
                nonlocal pings
                pings += 1
                return await real()

            stores.ping = counted  # type: ignore[method-assign]
            app = create_app(stores, SECRET)
            answers: list[int] = []
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://test") as c:

                async def ask(client: httpx.AsyncClient = c, into: list[int] = answers) -> None:
                    into.append((await client.get("/readyz")).status_code)

                async with anyio.create_task_group() as tg:
                    for _ in range(200):
                        tg.start_soon(ask)
            assert answers == [status] * 200
            assert pings == 1
    finally:
        await unreachable.close()
