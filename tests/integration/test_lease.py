"""The leader lease against a real store: one holder at a time, terms that only grow, a
renewal that fails once the lease was taken over, and a fence that refuses writes."""

from __future__ import annotations

import anyio
import httpx
import pytest

from dasscod.leadership import Leadership
from dasscod.listener.app import create_app
from dasscod.pipelines import load_pipelines
from dasscod.store import Stores
from dasscod.store.fence import NotLeader
from dasscod.store.outage import OutageLog
from dasscod.tokens import JobClaims, issue
from tests.conftest import make_track


async def test_one_holder_at_a_time_and_the_term_grows_with_each_take_over(
    stores: Stores,
) -> None:
    lease = stores.lease
    assert await lease.acquire("a", lease_s=0.5) == 1
    assert await lease.acquire("b", lease_s=0.5) is None, "held by a"
    assert await lease.renew("a", 1, lease_s=0.5)
    await anyio.sleep(0.6)  # a stops renewing: the lease expires
    assert await lease.acquire("b", lease_s=5) == 2
    assert not await lease.renew("a", 1, lease_s=5), "a deposed holder cannot renew"
    current = await lease.current()
    assert current is not None and (current.holder, current.term) == ("b", 2)
    await lease.release("b", 2)
    assert await lease.acquire("a", lease_s=5) == 3, "released: taken at once"


async def test_a_standby_refuses_writes_and_a_leader_writes(stores: Stores) -> None:
    leader = Leadership(stores.lease, lease_s=5, outage=OutageLog())
    standby = Leadership(stores.lease, lease_s=5, outage=OutageLog())
    fenced = Stores(stores.client, stores.db.name, {}, fence=standby.check)
    assert standby.role == "standby"
    with pytest.raises(NotLeader):
        await fenced.control.set_schema_version("probe", 1)
    assert await leader.acquire(anyio.Event())
    assert leader.role == "leader"
    writer = Stores(stores.client, stores.db.name, {}, fence=leader.check)
    await writer.control.set_schema_version("probe", 1)
    assert await stores.control.schema_version("probe") == 1
    with anyio.move_on_after(0.5) as waiting:
        await standby.acquire(anyio.Event())
    assert waiting.cancelled_caught, "the lease is held: the standby keeps waiting"
    assert standby.role == "standby"


async def test_a_leader_whose_lease_was_taken_steps_down_at_its_next_renewal(
    stores: Stores,
) -> None:
    leader = Leadership(stores.lease, lease_s=1, outage=OutageLog())
    assert await leader.acquire(anyio.Event())
    # Another daemon took the lease (as after a pause the leader did not notice).
    await stores.db["lease"].update_one({"_id": "leader"}, {"$set": {"holder": "other"},
                                                             "$inc": {"term": 1}})
    with anyio.fail_after(2):
        await leader.keep()
    assert leader.role == "standby"
    with pytest.raises(NotLeader):
        leader.check()


async def test_a_standby_answers_health_says_standby_and_refuses_callbacks(
    stores: Stores,
) -> None:
    standby = Leadership(stores.lease, lease_s=5, outage=OutageLog())
    fenced = Stores(stores.client, stores.db.name, load_pipelines(), fence=standby.check)
    await stores.track.insert(make_track("s-1"))
    # The load job submitted (by the leader): its "started" callback is a write.
    await stores.db["track"].update_one(
        {"_id": "s-1"},
        {"$set": {"job_list.0.status": "QUEUED", "job_list.0.attempt": 1,
                  "job_list.0.cluster": "local"}},
    )
    secret = "standby-test-secret-0123456789abcdef"
    app = create_app(fenced, secret, role=lambda: standby.role)
    token = issue(secret, JobClaims("s-1", "load", 1), ttl_s=60)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        answer = await client.post(
            "/api/v1/jobs/started",
            json={"asset_guid": "s-1", "job": "load", "attempt": 1},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert health.status_code == 200
    assert (ready.status_code, ready.json()) == (503, {"status": "standby"})
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert "leader lease" in answer.json()["detail"]
    track = await stores.track.get("s-1")
    assert track is not None and track.job("load").status.value == "QUEUED", "nothing applied"
