"""The control API in process, against the real store: authentication, every refusal, the
reads (listing, timeline, errors, clusters, limits), the holds surviving a restart, and the
audit naming the token behind every action. The end-to-end tests through the command line
against a running daemon are in tests/e2e/test_control_e2e.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dasscod.cluster.configured import build_clusters
from dasscod.coordination import Throttle, Wakeups
from dasscod.holds import Holds
from dasscod.listener.app import create_app
from dasscod.model import Flag, JobStatus, utcnow
from dasscod.pipeline import Event, JobEvent
from dasscod.pipelines import load_pipelines
from dasscod.services.control import ConfiguredLimits, ControlService
from dasscod.services.control_reads import ControlReads
from dasscod.settings import ClusterSettings
from dasscod.store import Stores
from tests.conftest import make_track

SECRET = "control-api-test-secret-0123456789abcdef"
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}
S = JobStatus


@dataclass
class Control:
    client: httpx.AsyncClient
    service: ControlService
    throttle: Throttle
    holds: Holds
    stores: Stores

    async def call(self, method: str, path: str, *, who: str = "alice",
                   **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, f"/api/v1/control{path}",
                                         headers={"Authorization": f"Bearer {TOKENS[who]}"},
                                         **kwargs)


def build(stores: Stores, tmp_path: Path, tokens: dict[str, str], *,
          role: Callable[[], str] | None = None) -> tuple[
        httpx.AsyncClient, ControlService, Throttle, Holds]:
    clusters = build_clusters({"local": ClusterSettings(work_root=tmp_path / "work",
                                                        state_dir=tmp_path / "jobs")})
    holds = Holds()
    throttle = Throttle(assets_in_flight=5, jobs_per_cluster={"local": 2}, wakeups=Wakeups(),
                        holds=holds)
    configured = ConfiguredLimits(assets_in_flight=5, jobs_per_cluster={"local": 2})
    service = ControlService(stores=stores, holds=holds, throttle=throttle, clusters=clusters,
                             pipelines=load_pipelines(), configured=configured)
    reads = ControlReads(stores=stores, holds=holds, throttle=throttle, clusters=clusters,
                         configured=configured)
    app = create_app(stores, SECRET, control=(service, reads), control_tokens=tokens, role=role)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    return client, service, throttle, holds


@pytest.fixture
async def control(stores: Stores, tmp_path: Path) -> AsyncIterator[Control]:
    client, service, throttle, holds = build(stores, tmp_path, TOKENS)
    async with client:
        yield Control(client, service, throttle, holds, stores)


async def add_asset(stores: Stores, guid: str, **jobs: JobStatus) -> None:
    track = make_track(guid)
    for job in track.job_list:
        if job.name in jobs:
            job.status = jobs[job.name]
            job.attempt = 1 if job.status is not S.WAITING else 0
            if job.status is S.ERROR:
                job.last_error = f"tesseract failed on {guid}/label.tif after 1234 ms"
    await stores.track.insert(track)


# --------------------------------------------------------------------------- authentication


async def test_without_a_token_the_control_api_is_off_and_says_how_to_turn_it_on(
    stores: Stores, tmp_path: Path
) -> None:
    client, *_ = build(stores, tmp_path, tokens={})
    async with client:
        answer = await client.get("/api/v1/control/assets",
                                  headers={"Authorization": "Bearer anything-at-all-123"})
    assert answer.status_code == 403
    assert "control.tokens" in answer.json()["detail"]


async def test_a_wrong_or_missing_token_is_refused_and_nothing_is_done(
    control: Control,
) -> None:
    await add_asset(control.stores, "a-1")
    wrong = await control.client.post("/api/v1/control/assets/a-1/cancel", json={},
                                      headers={"Authorization": "Bearer not-a-token-at-all"})
    missing = await control.client.post("/api/v1/control/assets/a-1/cancel", json={})
    assert wrong.status_code == missing.status_code == 401
    assert "admin token" in wrong.json()["detail"]
    job_token = await control.client.get("/api/v1/control/assets",
                                          headers={"Authorization": f"Bearer {SECRET}"})
    assert job_token.status_code == 401
    track = await control.stores.track.get("a-1")
    assert track is not None and track.jobs_status is S.WAITING
    assert (await control.call("GET", "/audit")).json() == []


# --------------------------------------------------------------------------- refusals


async def test_an_unknown_asset_is_a_404_saying_so(control: Control) -> None:
    for method, path, body in [("GET", "/assets/nope", None),
                               ("POST", "/assets/nope/cancel", {}),
                               ("POST", "/assets/nope/retry", {"job": "ocr"}),
                               ("POST", "/pause", {"kind": "asset", "name": "nope"})]:
        answer = await control.call(method, path, json=body)
        assert answer.status_code == 404, (path, answer.text)
        assert "no asset nope" in answer.json()["detail"]


async def test_retry_refuses_a_job_that_did_not_fail_with_a_409_that_says_what_to_do(
    control: Control,
) -> None:
    await add_asset(control.stores, "r-1", load=S.DONE, barcode=S.RUNNING)
    answer = await control.call("POST", "/assets/r-1/retry", json={"job": "load"})
    assert answer.status_code == 409
    assert answer.json()["detail"] == (
        "job load of r-1 is DONE, not ERROR or FAILED: nothing to retry (to run it again: "
        "`dasscod retry r-1 --from load`)")
    everything = await control.call("POST", "/assets/r-1/retry", json={})
    assert everything.status_code == 409 and "no job of r-1 is in ERROR" in everything.text
    running = await control.call("POST", "/assets/r-1/retry", json={"from_job": "load"})
    assert running.status_code == 409
    assert "barcode of r-1 is RUNNING: wait for it to end" in running.json()["detail"]
    unknown = await control.call("POST", "/assets/r-1/retry", json={"job": "nojob"})
    assert unknown.status_code == 404 and "has no job nojob" in unknown.text
    track = await control.stores.track.get("r-1")
    assert track is not None and track.job("load").status is S.DONE


async def test_retry_of_a_job_in_error_gives_it_fresh_attempts_recorded_under_the_token(
    control: Control,
) -> None:
    await add_asset(control.stores, "e-1", load=S.DONE, barcode=S.ERROR)
    answer = await control.call("POST", "/assets/e-1/retry", who="bob",
                                json={"job": "barcode", "reason": "scanner fixed"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["detail"] == "retrying barcode"
    track = await control.stores.track.get("e-1")
    assert track is not None
    assert track.job("barcode").status is S.WAITING and track.ready == ["barcode"]
    assert track.job("barcode").max_attempts == 1 + 3
    [entry] = [h for h in track.history if h.job == "barcode"]
    assert (entry.by, entry.reason, entry.to) == ("bob", "scanner fixed", "WAITING")
    [record] = (await control.call("GET", "/audit")).json()
    assert (record["by"], record["action"], record["target"], record["reason"]) == (
        "bob", "retry", "asset:e-1", "scanner fixed")


async def test_retry_from_a_job_runs_it_and_every_later_job_again(control: Control) -> None:
    await add_asset(control.stores, "f-1", load=S.DONE, barcode=S.DONE, ocr=S.ERROR)
    answer = await control.call("POST", "/assets/f-1/retry", json={"from_job": "barcode"})
    assert answer.status_code == 200, answer.text
    track = await control.stores.track.get("f-1")
    assert track is not None
    statuses = {j.name: j.status for j in track.job_list}
    assert statuses["load"] is S.DONE
    assert {statuses[n] for n in ("barcode", "ocr", "derivatives", "upload", "clean_up")} == {
        S.WAITING}
    assert track.ready == ["barcode"] and track.jobs_status is S.WAITING
    early = await control.call("POST", "/assets/f-1/retry", json={"from_job": "ocr"})
    assert early.status_code == 409
    assert "barcode (before ocr) is WAITING: retry from barcode instead" in early.text


# --------------------------------------------------------------------------- actions on assets


async def test_cancel_makes_every_unfinished_job_cancelled_not_error_and_only_once(
    control: Control,
) -> None:
    await add_asset(control.stores, "c-1", load=S.DONE)
    answer = await control.call("POST", "/assets/c-1/cancel", json={"reason": "duplicate"})
    assert answer.status_code == 200, answer.text
    track = await control.stores.track.get("c-1")
    assert track is not None and track.jobs_status is S.CANCELLED
    assert track.job("load").status is S.DONE
    assert {j.status for j in track.job_list[1:]} == {S.CANCELLED}
    assert not track.in_flight and track.ready == []
    again = await control.call("POST", "/assets/c-1/cancel", json={})
    assert again.status_code == 409 and "is CANCELLED: nothing to cancel" in again.text
    retry = await control.call("POST", "/assets/c-1/retry", json={"job": "barcode"})
    assert retry.status_code == 409 and "--from JOB" in retry.text
    rows = (await control.call("GET", "/assets", params={"status": "CANCELLED"})).json()
    assert [a["guid"] for a in rows["assets"]] == ["c-1"]
    errors = (await control.call("GET", "/errors")).json()
    assert errors == [], "a cancelled asset is no error"


async def test_a_paused_asset_is_not_claimed_and_its_history_says_who_paused_it(
    control: Control,
) -> None:
    await add_asset(control.stores, "p-1")
    answer = await control.call("POST", "/pause", json={"kind": "asset", "name": "p-1",
                                                        "reason": "label unreadable"})
    assert answer.status_code == 200 and answer.json()["changed"]
    again = await control.call("POST", "/pause", json={"kind": "asset", "name": "p-1"})
    assert again.status_code == 200 and not again.json()["changed"]
    claim = await control.stores.track.apply("p-1", [JobEvent("load", Event.CLAIM,
                                                              cluster="local")], cause="test")
    assert not claim.applied and claim.track.job("load").status is S.WAITING
    track = claim.track
    pause = [h for h in track.history if h.to == Flag.PAUSED]
    assert [(h.by, h.reason) for h in pause] == [("alice", "label unreadable")]
    listed = (await control.call("GET", "/assets", params={"paused": "true"})).json()
    assert [a["guid"] for a in listed["assets"]] == ["p-1"]
    resumed = await control.call("POST", "/resume", json={"kind": "asset", "name": "p-1"})
    assert resumed.status_code == 200
    after = await control.stores.track.get("p-1")
    assert after is not None and after.ready == ["load"]


# --------------------------------------------------------------------------- holds


async def test_pauses_and_limits_are_in_force_at_once_and_survive_a_restart(
    control: Control, stores: Stores, tmp_path: Path
) -> None:
    track = make_track("h-1")
    assert control.throttle.reserve(track, ["local"], "load") == "local"
    control.throttle.release(track.id, "local")
    for body in ({"kind": "cluster", "name": "local", "reason": "maintenance"},
                 {"kind": "pipeline", "name": "PIPEHERB0001"}, {"kind": "intake"}):
        answer = await control.call("POST", "/pause", json=body)
        assert answer.status_code == 200, answer.text
    assert control.throttle.reserve(track, ["local"], "load") is None
    limit = await control.call("POST", "/limits", json={"target": "cluster:local", "value": 1})
    assert limit.status_code == 200 and control.throttle.max_jobs["local"] == 1
    bad = await control.call("POST", "/pause", json={"kind": "cluster", "name": "mars"})
    assert bad.status_code == 404 and "clusters: local" in bad.text
    # A new daemon on the same database (a restart, or the standby taking over).
    _, service, throttle, holds = build(stores, tmp_path, TOKENS)
    await service.reload()
    assert holds.cluster_paused("local") and holds.pipeline_paused("PIPEHERB0001")
    assert holds.intake_held() is not None and throttle.max_jobs["local"] == 1
    clusters = (await control.call("GET", "/clusters")).json()
    assert clusters[0]["paused"]["by"] == "alice"
    assert clusters[0]["paused"]["reason"] == "maintenance"
    assert (clusters[0]["max_jobs"], clusters[0]["configured_max_jobs"]) == (1, 2)
    for body in ({"kind": "cluster", "name": "local"},
                 {"kind": "pipeline", "name": "PIPEHERB0001"}, {"kind": "intake"}):
        assert (await control.call("POST", "/resume", json=body)).status_code == 200
    await control.call("POST", "/limits", json={"target": "cluster:local", "value": None})
    assert control.throttle.reserve(track, ["local"], "load") == "local"
    assert control.throttle.max_jobs["local"] == 2
    await service.reload()
    assert holds.all() == [] and throttle.max_jobs["local"] == 2
    actions = [(r["action"], r["target"]) for r in
               (await control.call("GET", "/audit", params={"limit": 20})).json()]
    assert actions[:2] == [("limit", "cluster:local"), ("resume intake", "intake")]
    assert ("pause cluster", "cluster:local") in actions


async def test_drain_holds_intake_and_new_assets_but_not_those_in_flight(
    control: Control,
) -> None:
    answer = await control.call("POST", "/drain", json={"reason": "upgrade"})
    assert answer.status_code == 200 and "draining" in answer.json()["detail"]
    new = make_track("new-1")
    assert control.throttle.reserve(new, ["local"], "load") is None
    flying = make_track("fly-1").model_copy(update={"in_flight": True, "version": 1})
    control.throttle.observe(flying)
    assert control.throttle.reserve(flying, ["local"], "barcode") == "local"
    state = (await control.call("GET", "/state")).json()
    assert state["draining"] and state["holds"][0]["reason"] == "upgrade"
    off = await control.call("POST", "/drain", json={"on": False})
    assert off.status_code == 200 and not control.holds.draining


# --------------------------------------------------------------------------- reads


async def test_listing_filters_by_status_job_pipeline_and_age_and_pages_newest_first(
    control: Control,
) -> None:
    now = utcnow()
    for i in range(5):
        track = make_track(f"l-{i}").model_copy(
            update={"created_timestamp": now - timedelta(hours=i)})
        if i % 2:
            track.job_list[0].status, track.job_list[0].attempt = S.ERROR, 1
        await control.stores.track.insert(track)
    page = (await control.call("GET", "/assets", params={"limit": 2})).json()
    assert [a["guid"] for a in page["assets"]] == ["l-0", "l-1"]
    seen = [a["guid"] for a in page["assets"]]
    while page["next"]:
        page = (await control.call("GET", "/assets",
                                   params={"limit": 2, "after": page["next"]})).json()
        seen += [a["guid"] for a in page["assets"]]
    assert seen == [f"l-{i}" for i in range(5)]
    failed = (await control.call("GET", "/assets", params={"status": "ERROR", "job": "load"}))
    assert [a["guid"] for a in failed.json()["assets"]] == ["l-1", "l-3"]
    old = (await control.call("GET", "/assets", params={"older_than_s": 2.5 * 3600,
                                                         "pipeline": "PIPEHERB0001"}))
    assert [a["guid"] for a in old.json()["assets"]] == ["l-3", "l-4"]
    none = await control.call("GET", "/assets", params={"pipeline": "PIPEPIOF0001"})
    assert none.json()["assets"] == []
    bad = await control.call("GET", "/assets", params={"status": "BROKEN"})
    assert bad.status_code == 422 and "unknown status BROKEN" in bad.text


async def test_errors_are_grouped_by_job_and_reason(control: Control) -> None:
    for guid in ("g-1", "g-2", "g-3"):
        await add_asset(control.stores, guid, load=S.DONE, barcode=S.ERROR)
    await add_asset(control.stores, "g-4", load=S.ERROR)
    groups = (await control.call("GET", "/errors")).json()
    assert [(g["job"], g["count"]) for g in groups] == [("barcode", 3), ("load", 1)]
    assert groups[0]["reason"] == "tesseract failed on <guid>/label.tif after N ms"
    assert sorted(groups[0]["assets"]) == ["g-1", "g-2", "g-3"]


async def test_show_tells_every_attempt_with_cluster_scheduler_id_times_and_error(
    control: Control,
) -> None:
    stores = control.stores
    await stores.track.insert(make_track("t-1"))

    async def step(*events: JobEvent) -> None:
        await stores.track.apply("t-1", list(events), cause="test")

    await step(JobEvent("load", Event.CLAIM, cluster="local"))
    await step(JobEvent("load", Event.SUBMITTED, attempt=1, hpc_job_id="11"))
    await step(JobEvent("load", Event.STARTED, attempt=1))
    await step(JobEvent("load", Event.FAILED, attempt=1, error="disk full"))
    await step(JobEvent("load", Event.RETRY_DUE))
    await step(JobEvent("load", Event.CLAIM, cluster="local"))
    await step(JobEvent("load", Event.SUBMITTED, attempt=2, hpc_job_id="12"))
    await step(JobEvent("load", Event.FAILED, attempt=2, error="bad tiff", retryable=False))
    shown = (await control.call("GET", "/assets/t-1")).json()
    assert shown["status"] == "ERROR" and shown["failed_job"] == "load"
    load = shown["jobs"][0]
    assert [(a["attempt"], a["cluster"], a["hpc_job_id"], a["outcome"], a["error"])
            for a in load["attempts"]] == [(1, "local", "11", "RETRY", "disk full"),
                                           (2, "local", "12", "ERROR", "bad tiff")]
    assert load["attempts"][0]["started"] is not None
    assert all(a["claimed"] and a["ended"] for a in load["attempts"])
    assert any(p.endswith("dassco.t-1.load.2/stderr") for p in load["output"]), load["output"]
    assert [(h["from_"], h["to"]) for h in shown["history"] if h["job"] == "load"][-1] == (
        "QUEUED", "ERROR")
    assert shown["ars"]["is_in_ars"] == "NO"


async def test_a_standby_refuses_actions_and_still_answers_reads(
    stores: Stores, tmp_path: Path
) -> None:
    client, *_ = build(stores, tmp_path, TOKENS, role=lambda: "standby")
    headers = {"Authorization": f"Bearer {TOKENS['alice']}"}
    async with client:
        paused = await client.post("/api/v1/control/pause", json={"kind": "intake"},
                                   headers=headers)
        listed = await client.get("/api/v1/control/assets", headers=headers)
    assert paused.status_code == 503 and "standby" in paused.json()["detail"]
    assert await stores.control.holds() == [] and await stores.audit.latest(5) == []
    assert listed.status_code == 200
