"""The pull agent's API over the real listener app and a real store: credentials, leases
(each claimed job handed out once while leased, again after the lease ran out), and what
`submitted` and `report` change."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from dasscod.cluster.configured import build_clusters
from dasscod.listener.app import create_app
from dasscod.model import JobStatus, utcnow
from dasscod.pipeline import Event, JobEvent
from dasscod.pipelines import load_pipelines
from dasscod.services.agent import AgentService
from dasscod.services.launch import Launcher
from dasscod.settings import ClusterSettings
from dasscod.store import Stores
from tests.conftest import make_track

SECRET = "agent-api-test-secret-0123456789abcdef"
AGENT = "agent-credential-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {AGENT}"}


@pytest.fixture
async def client(stores: Stores) -> AsyncIterator[httpx.AsyncClient]:
    clusters = build_clusters({
        "local": ClusterSettings(scheduler="pull", agent_token=AGENT,
                                 work_root="/cluster/work", state_dir="/cluster/jobs",
                                 lease_s=60),
        "other": ClusterSettings(),
    })  # fmt: skip
    launcher = Launcher(stores=stores, clusters=clusters, pipelines=load_pipelines(),
                        callback_base="http://daemon/api/v1", token_secret=SECRET,
                        token_ttl_s=3600)
    app = create_app(stores, SECRET, agent=AgentService(stores, clusters, launcher.job_spec))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        yield c


async def claimed(stores: Stores, guid: str) -> None:
    await stores.track.insert(make_track(guid))
    await stores.track.apply(guid, [JobEvent("load", Event.CLAIM, cluster="local")],
                             cause="test")


async def claim(client: httpx.AsyncClient, n: int = 10) -> list[dict[str, Any]]:
    answer = await client.post("/api/v1/agent/local/claim", json={"max": n}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    result: list[dict[str, Any]] = answer.json()
    return result


async def test_credentials(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/agent/local/jobs")).status_code == 401
    wrong = {"Authorization": "Bearer not-the-credential"}
    assert (await client.get("/api/v1/agent/local/jobs", headers=wrong)).status_code == 403
    # Not a pull cluster, or none at all: the credential of another cluster opens nothing.
    assert (await client.get("/api/v1/agent/other/jobs", headers=AUTH)).status_code == 403
    assert (await client.get("/api/v1/agent/nope/jobs", headers=AUTH)).status_code == 403
    assert (await client.get("/api/v1/agent/local/jobs", headers=AUTH)).status_code == 200


async def test_each_job_is_handed_out_once_while_leased(
    client: httpx.AsyncClient, stores: Stores
) -> None:
    for guid in ("a1", "a2", "a3"):
        await claimed(stores, guid)
    first = await claim(client, 2)
    second = await claim(client, 10)
    assert len(first) == 2 and len(second) == 1
    assert {j["asset_guid"] for j in first + second} == {"a1", "a2", "a3"}
    assert await claim(client) == []
    job = first[0]
    assert job["name"] == f"dassco.{job['asset_guid']}.load.1"
    assert job["submit_with"] == "torque"
    assert f"#PBS -N {job['name']}" in job["script"] and "DASSCO_TOKEN=" in job["script"]
    assert "/cluster/work/" in job["script"]
    track = await stores.track.get(job["asset_guid"])
    assert track is not None and track.job("load").lease_until is not None
    assert track.job("load").status is JobStatus.STARTING


async def test_an_expired_lease_is_claimable_again(
    client: httpx.AsyncClient, stores: Stores
) -> None:
    await claimed(stores, "b1")
    assert len(await claim(client)) == 1
    await stores.track.collection.update_one(
        {"_id": "b1"}, {"$set": {"job_list.0.lease_until": utcnow() - timedelta(seconds=1)}}
    )
    again = await claim(client)
    assert [j["asset_guid"] for j in again] == ["b1"]


async def test_submitted_then_report_lost_and_cancel(
    client: httpx.AsyncClient, stores: Stores
) -> None:
    await claimed(stores, "c1")
    [job] = await claim(client)
    body = {"asset_guid": "c1", "job": "load", "attempt": 1, "hpc_job_id": "41"}
    for _ in range(2):  # idempotent
        answer = await client.post("/api/v1/agent/local/submitted", json=body, headers=AUTH)
        assert answer.status_code == 200 and answer.json()["status"] == "QUEUED"
    stale = {**body, "attempt": 2}
    answer = await client.post("/api/v1/agent/local/submitted", json=stale, headers=AUTH)
    assert answer.json()["applied"] is False
    live = (await client.get("/api/v1/agent/local/jobs", headers=AUTH)).json()
    assert live == [{"asset_guid": "c1", "job": "load", "attempt": 1, "name": job["name"],
                     "hpc_job_id": "41", "status": "QUEUED"}]
    running = {**body, "state": "RUNNING"}
    report = await client.post("/api/v1/agent/local/report", json={"jobs": [running]},
                               headers=AUTH)
    assert report.json() == {"cancel": [], "lost": 0, "submitted": 0, "forget": []}
    # A second scheduler job of the same attempt is cancelled.
    twin = {**running, "hpc_job_id": "42"}
    gone = {**body, "state": "UNKNOWN", "reason": "no longer known"}
    report = await client.post("/api/v1/agent/local/report", json={"jobs": [twin, gone]},
                               headers=AUTH)
    assert report.json() == {"cancel": ["42"], "lost": 1, "submitted": 0, "forget": []}
    track = await stores.track.get("c1")
    assert track is not None and track.job("load").status is JobStatus.RETRY
    assert "no longer known" in (track.job("load").last_error or "")
    # The attempt is over; its job still runs: it is given `grace_s` to leave by itself,
    # as a job still queued for it is not.
    report = await client.post("/api/v1/agent/local/report", json={"jobs": [running]},
                               headers=AUTH)
    assert report.json()["cancel"] == []
    queued = {**running, "state": "PENDING"}
    report = await client.post("/api/v1/agent/local/report", json={"jobs": [queued]},
                               headers=AUTH)
    assert report.json()["cancel"] == ["41"]


async def test_a_report_records_a_job_submitted_by_an_agent_that_died(
    client: httpx.AsyncClient, stores: Stores
) -> None:
    await claimed(stores, "d1")
    await claim(client)
    seen = {"asset_guid": "d1", "job": "load", "attempt": 1, "hpc_job_id": "77",
            "state": "PENDING"}
    report = await client.post("/api/v1/agent/local/report", json={"jobs": [seen]},
                               headers=AUTH)
    assert report.json() == {"cancel": [], "lost": 0, "submitted": 1, "forget": []}
    track = await stores.track.get("d1")
    assert track is not None
    assert track.job("load").hpc_job_id == "77" and track.job("load").lease_until is None


async def test_jobs_of_another_cluster_are_not_the_agents(
    client: httpx.AsyncClient, stores: Stores
) -> None:
    await stores.track.insert(make_track("e1"))
    await stores.track.apply("e1", [JobEvent("load", Event.CLAIM, cluster="other")],
                             cause="test")
    assert await claim(client) == []
    body = {"asset_guid": "e1", "job": "load", "attempt": 1, "hpc_job_id": "5"}
    answer = await client.post("/api/v1/agent/local/submitted", json=body, headers=AUTH)
    assert answer.status_code == 403


QUEUE_FULL = ("qsub: submit error (Maximum number of jobs already in queue for user MSG=total "
              "number of current user's jobs exceeds the queue limit: user dassco@login1)")
BAD_QUEUE = "sbatch: error: Batch job submission failed: Invalid partition name specified"


async def refuse(client: httpx.AsyncClient, guid: str, attempt: int, message: str,
                 cluster: str = "local") -> httpx.Response:
    body = {"asset_guid": guid, "job": "load", "attempt": attempt, "message": message,
            "exit_status": 1}
    return await client.post(f"/api/v1/agent/{cluster}/refused", json=body, headers=AUTH)


async def test_a_refused_submission_is_retried_then_an_error_with_the_message(
    client: httpx.AsyncClient, stores: Stores
) -> None:
    await claimed(stores, "r1")
    for attempt in (1, 2, 3):  # HERB0001's load: three attempts
        [job] = await claim(client)
        assert job["attempt"] == attempt
        answer = await refuse(client, "r1", attempt, QUEUE_FULL)
        assert answer.status_code == 200, answer.text
        track = await stores.track.get("r1")
        assert track is not None
        load = track.job("load")
        assert load.last_error == f"qsub refused the job on the cluster (exit status 1): " \
                                  f"{QUEUE_FULL}"
        if attempt < 3:
            assert answer.json()["status"] == "RETRY" and load.not_before is not None
            # What housekeeping and the dispatcher do once the backoff has passed.
            await stores.track.apply("r1", [JobEvent("load", Event.RETRY_DUE),
                                            JobEvent("load", Event.CLAIM, cluster="local")],
                                     cause="test")
    assert answer.json()["status"] == "ERROR"
    assert track is not None and track.jobs_status is JobStatus.ERROR
    assert await claim(client) == []
    # Reported again (an agent retrying its report): nothing changes.
    again = await refuse(client, "r1", 3, QUEUE_FULL)
    assert again.json()["applied"] is False and again.json()["status"] == "ERROR"


async def test_a_refusal_no_retry_can_fix_is_an_error_at_once(
    client: httpx.AsyncClient, stores: Stores
) -> None:
    await claimed(stores, "r2")
    await claim(client)
    answer = await refuse(client, "r2", 1, BAD_QUEUE)
    assert answer.json()["status"] == "ERROR"
    track = await stores.track.get("r2")
    assert track is not None and track.job("load").attempt == 1
    assert "Invalid partition name specified" in (track.job("load").last_error or "")


async def test_refusals_that_change_nothing(client: httpx.AsyncClient, stores: Stores) -> None:
    await claimed(stores, "r3")
    await claim(client)
    # A stale attempt, then one whose job the scheduler took after all (it has an id).
    stale = await refuse(client, "r3", 2, QUEUE_FULL)
    assert stale.status_code == 200 and stale.json()["applied"] is False
    body = {"asset_guid": "r3", "job": "load", "attempt": 1, "hpc_job_id": "9"}
    await client.post("/api/v1/agent/local/submitted", json=body, headers=AUTH)
    late = await refuse(client, "r3", 1, QUEUE_FULL)
    assert late.json() == {"applied": False, "status": "QUEUED", "detail": late.json()["detail"]}
    track = await stores.track.get("r3")
    assert track is not None and track.job("load").last_error is None
    # Not the agent's cluster, an unknown asset, an empty message.
    await stores.track.insert(make_track("r4"))
    await stores.track.apply("r4", [JobEvent("load", Event.CLAIM, cluster="other")],
                             cause="test")
    assert (await refuse(client, "r4", 1, QUEUE_FULL)).status_code == 403
    assert (await refuse(client, "nope", 1, QUEUE_FULL)).status_code == 404
    assert (await refuse(client, "r3", 1, "")).status_code == 422


async def report_forgotten(
    client: httpx.AsyncClient, stores: Stores, guid: str, job_id: str, *, reason: str,
    exit_file: str,
) -> httpx.Response:
    """The agent takes `guid`'s load job, submits it as `job_id`, and later reports that the
    scheduler no longer knows the job, sending what its exit file says."""
    await claimed(stores, guid)
    await claim(client)
    body = {"asset_guid": guid, "job": "load", "attempt": 1, "hpc_job_id": job_id}
    await client.post("/api/v1/agent/local/submitted", json=body, headers=AUTH)
    gone = {**body, "state": "UNKNOWN", "reason": reason, "exit_file": exit_file}
    return await client.post("/api/v1/agent/local/report", json={"jobs": [gone]},
                             headers=AUTH)


async def test_an_exit_file_says_how_a_job_the_scheduler_forgot_ended(
    client: httpx.AsyncClient, stores: Stores
) -> None:
    report = await report_forgotten(
        client, stores, "x1", "41", reason="the scheduler no longer knows the job",
        exit_file="status=143 signal=TERM elapsed=61 limit=60 job=41",
    )
    assert report.json() == {"cancel": [], "lost": 1, "submitted": 0, "forget": []}
    track = await stores.track.get("x1")
    assert track is not None
    load = track.job("load")
    assert (load.status, load.exit_state) == (JobStatus.RETRY, "TIMEOUT")
    assert load.last_error == (
        "job ended (TIMEOUT, exit code 143) without reporting back: stopped by SIGTERM after "
        "61 s, at its walltime of 60 s (the job's exit file)")


async def test_an_exit_file_that_says_nothing_leaves_the_state_unknown(
    client: httpx.AsyncClient, stores: Stores
) -> None:
    await report_forgotten(client, stores, "x2", "42", reason="ended",
                           exit_file="not an exit file")
    track = await stores.track.get("x2")
    assert track is not None and track.job("load").exit_state == "UNKNOWN"
