"""The leader lease against a real store: one holder at a time, terms that only grow, a
renewal that fails once the lease was taken over, and a fence that refuses writes."""

from __future__ import annotations

import anyio
import pytest

from dasscod.leadership import Leadership
from dasscod.store import Stores
from dasscod.store.fence import NotLeader
from dasscod.store.outage import OutageLog


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
