"""The benchmark's MongoDB command count (dasscod/devstack/bench_commands.py): each command is
attributed to the store method and daemon code that sent it, and a timed loop's reads are
told apart from its writes to an asset, which stay the asset's cost."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

from dasscod.coordination import Throttle, Wakeups
from dasscod.devstack.assets import make_track
from dasscod.devstack.bench_commands import CommandCounter, by_caller, by_kind, by_source
from dasscod.model import JobStatus
from dasscod.pipeline import Event, JobEvent, RetryPolicy
from dasscod.pipelines import load_pipelines
from dasscod.store import Stores
from dasscod.supervisors.housekeeping import Housekeeping


@pytest.fixture
async def counted(mongo_uri: str) -> AsyncIterator[tuple[Stores, CommandCounter]]:
    counter = CommandCounter()
    name = f"test_{uuid.uuid4().hex[:12]}"
    # No back-off: a failed job's retry is due at once, for housekeeping to pick up.
    stores = Stores.connect(mongo_uri, name, load_pipelines(), listeners=[counter],
                            policy=RetryPolicy(0.0, 0.0))
    await stores.ensure_indexes()
    try:
        yield stores, counter
    finally:
        await stores.client.drop_database(name)
        await stores.close()


async def test_housekeeping_reads_are_periodic_and_its_retry_is_the_assets(
    counted: tuple[Stores, CommandCounter],
) -> None:
    stores, counter = counted
    await stores.track.insert(make_track("a1"))
    await stores.track.apply("a1", [JobEvent("load", Event.CLAIM, cluster="local")], cause="t")
    await stores.track.apply(
        "a1", [JobEvent("load", Event.FAILED, attempt=1, retryable=True, error="boom")], cause="t"
    )
    counter.reset()
    stopping = anyio.Event()

    async def one_pass_only() -> None:
        stopping.set()  # `run` finishes the pass it is in, then returns

    throttle = Throttle(assets_in_flight=5, jobs_per_cluster={"local": 1}, wakeups=Wakeups())
    keeper = Housekeeping(stores=stores, throttle=throttle, interval_s=60.0, stopping=stopping,
                          also=one_pass_only)
    await keeper.run()
    asset_path, periodic = counter.asset_path(), counter.periodic()

    track = await stores.track.get("a1")
    assert track is not None and track.job("load").status is JobStatus.WAITING
    # The retry it made due is a write to the asset: counted for the asset, not as background.
    assert by_caller(asset_path) == {"update track: track.apply from housekeeping.run_once": 1}
    # Its reads (due retries, timed pauses, in-flight assets, the next due retry) are its
    # fixed cost per pass.
    assert by_source(periodic) == {"housekeeping": 4}
    assert by_kind(periodic) == {"find": 4}


async def test_an_assets_commands_are_named_by_store_method(
    counted: tuple[Stores, CommandCounter],
) -> None:
    stores, counter = counted
    counter.reset()  # not the indexes made at start
    await stores.track.insert(make_track("a2"))
    assert await stores.track.get("a2") is not None
    assert counter.periodic() == []
    assert by_caller(counter.asset_path()) == {
        "find track: track.get": 1,
        "insert track: track.insert": 1,
    }
