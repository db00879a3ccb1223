"""Housekeeping of a pull cluster, which the daemon cannot reach, over the real agent API and a
real store: the stray jobs its agent reports are judged by the watcher's rule and named in the
report's answer (`cancel`), and retention's removal of a settled asset's files there is asked
of the agent (`forget`) and recorded as done when the agent says so (`forgotten`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from dasscod.cluster.configured import Cluster, build_clusters
from dasscod.coordination import Throttle, Wakeups
from dasscod.holds import Holds
from dasscod.listener.app import create_app
from dasscod.model import AgentCleanup, Flag, JobStatus
from dasscod.pipeline import Event, JobEvent
from dasscod.pipelines import load_pipelines
from dasscod.services.agent import AgentService
from dasscod.services.control import ConfiguredLimits
from dasscod.services.control_reads import ControlReads
from dasscod.services.launch import Launcher
from dasscod.settings import ClusterSettings
from dasscod.store import Stores
from dasscod.supervisors.retention import Retention
from tests.conftest import make_track

SECRET = "pull-housekeeping-secret-0123456789abcdef"
AGENT = "pull-housekeeping-agent-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {AGENT}"}
Agent = Callable[[str, dict[str, Any]], Any]


@pytest.fixture
def clusters() -> dict[str, Cluster]:
    return build_clusters({
        "pull": ClusterSettings(scheduler="pull", agent_token=AGENT, work_root="/cluster/work",
                                state_dir="/cluster/jobs", lease_s=60),
        "ssh": ClusterSettings(),
    })  # fmt: skip


async def agent_api(stores: Stores, clusters: dict[str, Cluster],
                    grace_s: float) -> AsyncIterator[httpx.AsyncClient]:
    launcher = Launcher(stores=stores, clusters=clusters, pipelines=load_pipelines(),
                        callback_base="http://daemon/api/v1", token_secret=SECRET,
                        token_ttl_s=3600)
    service = AgentService(stores, clusters, launcher.job_spec, grace_s=grace_s)
    app = create_app(stores, SECRET, agent=service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        yield client


@pytest.fixture
async def client(stores: Stores, clusters: dict[str, Cluster]
                 ) -> AsyncIterator[httpx.AsyncClient]:
    async for c in agent_api(stores, clusters, grace_s=3600):
        yield c


async def post(client: httpx.AsyncClient, route: str, body: dict[str, Any]) -> Any:
    answer = await client.post(f"/api/v1/agent/pull/{route}", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    return answer.json()


def seen(guid: str, attempt: int, job_id: str, state: str = "RUNNING",
         job: str = "load") -> dict[str, Any]:
    return {"asset_guid": guid, "job": job, "attempt": attempt, "hpc_job_id": job_id,
            "state": state}


async def submitted(stores: Stores, guid: str, job_id: str, attempt: int = 1, *,
                    new: bool = True) -> None:
    """`guid`'s load attempt runs on the pull cluster as `job_id` (`new`: a new asset)."""
    if attempt == 1 and new:
        await stores.track.insert(make_track(guid))
    await stores.track.apply(guid, [JobEvent("load", Event.CLAIM, cluster="pull")],
                             cause="test")
    await stores.track.apply(guid, [JobEvent("load", Event.SUBMITTED, attempt=attempt,
                                             hpc_job_id=job_id)], cause="test")


def reads(stores: Stores, clusters: dict[str, Cluster]) -> ControlReads:
    """What the operators' commands read."""
    holds = Holds()
    limits = {name: 2 for name in clusters}
    return ControlReads(
        stores=stores, holds=holds, clusters=clusters,
        throttle=Throttle(assets_in_flight=5, jobs_per_cluster=limits, wakeups=Wakeups(),
                          holds=holds),
        configured=ConfiguredLimits(assets_in_flight=5, jobs_per_cluster=limits),
    )  # fmt: skip


async def files_to_remove(stores: Stores, clusters: dict[str, Cluster]) -> dict[str, int]:
    """What `dasscod clusters` says is left for each cluster's agent to remove."""
    views = await reads(stores, clusters).cluster_views()
    return {view.name: view.files_to_remove for view in views}


async def test_strays_are_named_for_cancelling_by_the_watchers_rule(
    client: httpx.AsyncClient, stores: Stores, clusters: dict[str, Cluster]
) -> None:
    await submitted(stores, "s1", "100")  # live: its job is accounted for
    await submitted(stores, "s2", "200")
    await stores.track.apply("s2", [JobEvent("load", Event.FAILED, attempt=1, retryable=True,
                                             error="boom")], cause="test")
    await stores.track.apply("s2", [JobEvent("load", Event.RETRY_DUE)], cause="test")
    await submitted(stores, "s2", "201", attempt=2)
    report = [
        seen("s1", 1, "100"),
        seen("s1", 1, "101", "PENDING"),  # a second job for a live attempt
        seen("s2", 1, "200"),  # attempt 1 moved on; its job still runs: grace first
        seen("s2", 1, "202", "PENDING"),  # ... and one still queued: at once
        seen("s2", 2, "201"),
        seen("untracked", 1, "300"),  # an asset this daemon does not know
        seen("s1", 1, "102", "COMPLETED"),  # ended: nothing to cancel
    ]
    answer = await post(client, "report", {"jobs": report})
    assert sorted(answer["cancel"]) == ["101", "202", "300"]
    again = await post(client, "report", {"jobs": report})
    assert sorted(again["cancel"]) == ["101", "202", "300"]  # until they are gone
    track = await stores.track.get("s1")
    assert track is not None and track.job("load").status is JobStatus.QUEUED

    # Once its grace is over (here: none), the job of the attempt that moved on goes too.
    async for impatient in agent_api(stores, clusters, grace_s=0):
        answer = await post(impatient, "report", {"jobs": report})
    assert sorted(answer["cancel"]) == ["101", "200", "202", "300"]


async def settled_on_pull(stores: Stores, work_area: Path, guid: str) -> list[str]:
    """A DONE asset in ERDA, with its folder in the work area, whose load ran twice on the
    pull cluster (a retry) and its other jobs once: the scheduler names of its attempts."""
    (work_area / guid).mkdir(parents=True)
    (work_area / guid / "a.tif").write_bytes(b"pixels")
    track = make_track(guid)
    track.temporary_files_local = Flag.YES
    track.temporary_path_local = str(work_area / guid)
    await stores.track.insert(track)
    await submitted(stores, guid, "10", new=False)
    await stores.track.apply(guid, [JobEvent("load", Event.FAILED, attempt=1,
                                             retryable=True, error="boom")], cause="test")
    await stores.track.apply(guid, [JobEvent("load", Event.RETRY_DUE)], cause="test")
    await submitted(stores, guid, "11", attempt=2)
    await stores.track.apply(guid, [JobEvent("load", Event.FINISHED, attempt=2)],
                             cause="test")
    for job in track.job_list[1:]:
        await stores.track.apply(guid, [JobEvent(job.name, Event.CLAIM, cluster="pull")],
                                 cause="test")
        await stores.track.apply(guid, [JobEvent(job.name, Event.FINISHED, attempt=1)],
                                 cause="test")
    await stores.track.set_fields(guid, {"erda_sync": Flag.YES}, cause="test: in ERDA")
    return sorted([*(f"dassco.{guid}.{j.name}.1" for j in track.job_list),
                   f"dassco.{guid}.load.2"])


def retention(stores: Stores, clusters: dict[str, Cluster], work_area: Path) -> Retention:
    return Retention(stores=stores, clusters=clusters, work_area=work_area, retention_days=30,
                     archived_by_ars=True, interval_s=1, stopping=anyio.Event())


async def test_retention_asks_the_agent_to_remove_a_settled_assets_files(
    client: httpx.AsyncClient, stores: Stores, clusters: dict[str, Cluster], tmp_path: Path
) -> None:
    work_area = tmp_path / "assets"
    names = await settled_on_pull(stores, work_area, "done1")
    assert (await post(client, "report", {"jobs": []}))["forget"] == []

    assert await retention(stores, clusters, work_area).run_once() == 1
    assert not (work_area / "done1").exists()
    after = await stores.track.get("done1")
    assert after is not None and after.temporary_files_local is Flag.NO
    assert after.agent_cleanup == [AgentCleanup(cluster="pull", work_dir="/cluster/work/done1",
                                                names=names)]
    assert await files_to_remove(stores, clusters) == {"pull": 1, "ssh": 0}
    assert (await reads(stores, clusters).timeline("done1")).files_left_on == ["pull"]
    # The agent's next report is answered with what to remove, until it says it did.
    for _ in range(2):
        answer = await post(client, "report", {"jobs": []})
        assert answer["forget"] == [{"asset_guid": "done1", "work_dir": "/cluster/work/done1",
                                     "names": names}]
    assert (await post(client, "forgotten", {"asset_guids": ["done1"]})) == {"cleared": 1}
    assert (await post(client, "report", {"jobs": []}))["forget"] == []
    assert (await post(client, "forgotten", {"asset_guids": ["done1"]})) == {"cleared": 0}
    assert await files_to_remove(stores, clusters) == {"pull": 0, "ssh": 0}
    assert (await reads(stores, clusters).timeline("done1")).files_left_on == []
    final = await stores.track.get("done1")
    assert final is not None and final.agent_cleanup == []
    bad = await client.post("/api/v1/agent/pull/forgotten", json={"asset_guids": ["a/../b"]},
                            headers=AUTH)
    assert bad.status_code == 422


async def test_an_asset_running_again_is_not_cleaned_under_its_jobs(
    client: httpx.AsyncClient, stores: Stores
) -> None:
    """An operator ran a cleaned-up asset again before the agent got to it: its files on
    the cluster are in use, so the agent is not told to remove them until it stops."""
    await submitted(stores, "rerun", "50")
    await stores.track.set_fields(
        "rerun", {"agent_cleanup": [AgentCleanup(cluster="pull", work_dir="/cluster/work/rerun",
                                                 names=["dassco.rerun.load.1"])]},
        cause="test: cleaned up before")
    assert (await post(client, "report", {"jobs": [seen("rerun", 1, "50")]}))["forget"] == []
    track = await stores.track.get("rerun")
    assert track is not None
    await stores.track.apply("rerun", [JobEvent(j.name, Event.OPERATOR_CANCEL)
                                       for j in track.job_list], cause="test: cancelled")
    forget = (await post(client, "report", {"jobs": []}))["forget"]
    assert [order["asset_guid"] for order in forget] == ["rerun"]


async def test_assets_cleaned_up_by_an_earlier_version_are_asked_for_once(
    stores: Stores, clusters: dict[str, Cluster], tmp_path: Path
) -> None:
    """Before retention asked pull clusters' agents, it left their files there: the first
    start of this version asks for those too, once per database."""
    work_area = tmp_path / "assets"
    names = await settled_on_pull(stores, work_area, "old1")
    keeper = retention(stores, clusters, work_area)
    await keeper.run_once()
    # What the earlier version left: cleaned up here, nothing asked of the agent.
    await stores.track.collection.update_one(
        {"_id": "old1"}, {"$unset": {"agent_cleanup": ""}, "$pull": {"queues": "cleanup:pull"}})
    await settled_on_pull(stores, work_area, "kept1")  # not cleaned up yet: retention's
    assert await files_to_remove(stores, clusters) == {"pull": 0, "ssh": 0}

    assert await keeper.backfill_agent_cleanup() == 1
    [asked] = await stores.track.find(["old1"])
    assert asked.agent_cleanup == [AgentCleanup(cluster="pull", work_dir="/cluster/work/old1",
                                                names=names)]
    assert await files_to_remove(stores, clusters) == {"pull": 1, "ssh": 0}
    assert await keeper.backfill_agent_cleanup() == 0  # once per database
