"""Retries: connection drops, timeouts and 5xx are retried within the budget; other 4xx are
never retried; 429 waits what Retry-After says, unless that is longer than we hold a call."""

from __future__ import annotations

import time

import pytest

from dasscod.ars import (
    ArsBadRequest,
    ArsClient,
    ArsForbidden,
    ArsNotFound,
    ArsThrottled,
    ArsUnavailable,
    InternalStatus,
)
from dasscod.devstack.ars import ArsSimulator
from tests.ars.conftest import make_asset


async def _created(ars: ArsClient, sim: ArsSimulator) -> str:
    asset = make_asset()
    await ars.create_asset(asset, allocation_mb=1)
    sim.requests.clear()
    return asset.asset_guid


async def test_5xx_is_retried_until_it_succeeds(sim: ArsSimulator, ars: ArsClient) -> None:
    guid = await _created(ars, sim)
    sim.faults.fail_next = 2
    assert (await ars.get_asset(guid)).asset_guid == guid
    assert [r.outcome for r in sim.requests] == ["error", "error", "ok"]


async def test_dropped_connections_are_retried(sim: ArsSimulator, ars: ArsClient) -> None:
    guid = await _created(ars, sim)
    sim.faults.drop_next = 2
    assert (await ars.get_asset(guid)).asset_guid == guid
    assert [r.outcome for r in sim.requests] == ["drop", "drop", "ok"]


async def test_timeouts_are_retried(sim: ArsSimulator) -> None:
    async with ArsClient(sim.settings(timeout_s=0.2)) as ars:
        guid = await _created(ars, sim)
        sim.faults.slow_next, sim.faults.slow_s = 1, 0.5
        assert (await ars.get_asset(guid)).asset_guid == guid
        assert sim.count(guid) == 2


async def test_uploads_are_retried_with_their_body(sim: ArsSimulator, ars: ArsClient) -> None:
    asset = make_asset()
    await ars.create_asset(asset, allocation_mb=1)
    assert asset.institution and asset.collection
    from dasscod.ars import MinimalAsset

    where = MinimalAsset(
        asset_guid=asset.asset_guid, institution=asset.institution, collection=asset.collection
    )
    sim.faults.fail_next = 1
    result = await ars.upload_file(where, "a.tif", b"pixels")
    assert result.actual_crc == result.expected_crc
    assert await ars.download_file(where, "a.tif") == b"pixels"


async def test_retries_stop_at_the_attempt_budget(sim: ArsSimulator, ars: ArsClient) -> None:
    guid = await _created(ars, sim)
    sim.faults.fail_next = 100
    with pytest.raises(ArsUnavailable) as caught:
        await ars.get_asset(guid)
    assert caught.value.status == 503
    assert caught.value.error_code == "UPSTREAM_ERROR"
    assert sim.count(guid) == ars.settings.retry_attempts


async def test_an_outage_shorter_than_the_budget_is_ridden_out(sim: ArsSimulator) -> None:
    settings = sim.settings(retry_attempts=20, retry_wait_initial_s=0.05, retry_wait_max_s=0.1)
    async with ArsClient(settings) as ars:
        guid = await _created(ars, sim)
        sim.faults.down_for(0.3)
        started = time.monotonic()
        assert (await ars.get_asset(guid)).asset_guid == guid
        assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize(
    ("call", "error", "status"),
    [
        ("bad_request", ArsBadRequest, 400),
        ("forbidden", ArsForbidden, 403),
        ("not_found", ArsNotFound, 404),
    ],
)
async def test_client_errors_are_not_retried(
    sim: ArsSimulator, ars: ArsClient, call: str, error: type[Exception], status: int
) -> None:
    guid = await _created(ars, sim)
    sim.state.forbidden_guids.add("forbidden-asset")
    sim.state.assets["forbidden-asset"] = sim.state.assets[guid]
    sim.state.lock(guid)
    with pytest.raises(error) as caught:
        if call == "bad_request":  # a locked asset refuses updates
            await ars.update_asset(make_asset(guid))
        elif call == "forbidden":
            await ars.asset_status("forbidden-asset")
        else:
            await ars.asset_status("no-such-asset")
    assert getattr(caught.value, "status", None) == status
    assert len(sim.requests) == 1


async def test_429_waits_for_retry_after(sim: ArsSimulator, ars: ArsClient) -> None:
    guid = await _created(ars, sim)
    sim.faults.throttle_next, sim.faults.retry_after_s = 1, 0.3
    started = time.monotonic()
    status = await ars.asset_status(guid)
    assert status.status == InternalStatus.METADATA_RECEIVED
    assert time.monotonic() - started >= 0.3  # not the 0.01 s backoff of the settings
    assert [r.outcome for r in sim.requests] == ["throttle", "ok"]


async def test_429_asking_too_long_goes_back_to_the_caller(
    sim: ArsSimulator, ars: ArsClient
) -> None:
    guid = await _created(ars, sim)
    sim.faults.throttle_next, sim.faults.retry_after_s = 1, 120
    with pytest.raises(ArsThrottled) as caught:
        await ars.asset_status(guid)
    assert caught.value.retry_after == 120
    assert len(sim.requests) == 1
