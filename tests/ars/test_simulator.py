"""Simulator-only behaviour through the client: what a real ARS does but cannot be made to do
on demand (ERDA failing, a curator locking an asset), and the admin API for out-of-process use."""

from __future__ import annotations

import httpx
import pytest

from dasscod.ars import ArsBadRequest, ArsClient, ArsNotFound, InternalStatus
from dasscod.devstack.ars import ArsSimulator
from tests.ars.conftest import PIPELINE, WORKSTATION, eventually, make_asset, minimal


async def _status(ars: ArsClient, guid: str, *wanted: InternalStatus) -> InternalStatus | None:
    status = (await ars.asset_status(guid)).status
    return InternalStatus(status) if status in wanted else None


async def test_a_failed_erda_sync_keeps_the_share_and_can_be_repeated(
    sim: ArsSimulator, ars: ArsClient
) -> None:
    asset = make_asset()
    await ars.create_asset(asset, allocation_mb=1)
    await ars.upload_file(minimal(asset), "a.tif", b"pixels")
    sim.state.erda.fail_next = 1
    await ars.synchronize(asset.asset_guid, workstation=WORKSTATION, pipeline=PIPELINE)
    # While the sync runs the share takes no uploads.
    with pytest.raises(ArsBadRequest):
        await ars.upload_file(minimal(asset), "b.tif", b"more")

    async def failed() -> InternalStatus | None:
        return await _status(ars, asset.asset_guid, InternalStatus.ERDA_ERROR)

    await eventually(failed)
    status = await ars.asset_status(asset.asset_guid)
    assert status.error_message and "ERDA" in status.error_message
    assert status.share_allocation_mb == 1
    assert await ars.list_files(asset.asset_guid) == []

    await ars.synchronize(asset.asset_guid, workstation=WORKSTATION, pipeline=PIPELINE)

    async def completed() -> InternalStatus | None:
        return await _status(ars, asset.asset_guid, InternalStatus.COMPLETED)

    await eventually(completed)
    assert len(await ars.list_files(asset.asset_guid)) == 1


async def test_sync_without_a_share_is_refused(sim: ArsSimulator, ars: ArsClient) -> None:
    asset = make_asset()
    await ars.create_asset(asset, allocation_mb=1)
    await ars.delete_share(asset.asset_guid)
    with pytest.raises(ArsBadRequest):
        await ars.synchronize(asset.asset_guid, workstation=WORKSTATION, pipeline=PIPELINE)
    with pytest.raises(ArsNotFound) as caught:  # the file proxy's SHARE_NOT_FOUND HttpInfo
        await ars.delete_share(asset.asset_guid)
    assert caught.value.error_code == "SHARE_NOT_FOUND"


async def test_deleting_a_share_discards_files_not_yet_in_erda(
    sim: ArsSimulator, ars: ArsClient
) -> None:
    asset = make_asset()
    await ars.create_asset(asset, allocation_mb=1)
    await ars.upload_file(minimal(asset), "a.tif", b"pixels")
    await ars.delete_share(asset.asset_guid)
    await ars.create_share(minimal(asset), allocation_mb=1)
    assert await ars.list_share_files(minimal(asset)) == []


async def test_a_locked_asset_refuses_updates_until_unlocked(
    sim: ArsSimulator, ars: ArsClient
) -> None:
    asset = make_asset()
    await ars.create_asset(asset, allocation_mb=1)
    sim.state.lock(asset.asset_guid)
    with pytest.raises(ArsBadRequest, match="locked"):
        await ars.update_asset(asset)
    await ars.unlock_asset(asset.asset_guid)
    updated = await ars.update_asset(asset.model_copy(update={"update_user": None}))
    assert updated.update_user == ars.settings.update_user
    last = (await ars.events(asset.asset_guid))[-1]
    assert (last.user, last.pipeline, last.workstation) == ("dasscod", PIPELINE, WORKSTATION)


async def test_update_lacking_required_fields_is_not_sent(
    sim: ArsSimulator, ars: ArsClient
) -> None:
    asset = make_asset().model_copy(update={"workstation": None})
    with pytest.raises(ValueError, match="workstation"):
        await ars.update_asset(asset)
    assert sim.requests == []


async def test_derivative_needs_a_parent_with_a_file(sim: ArsSimulator, ars: ArsClient) -> None:
    parent = make_asset()
    await ars.create_asset(parent, allocation_mb=1)
    child = make_asset().model_copy(update={"parent_guid": parent.asset_guid})
    with pytest.raises(ArsBadRequest, match="no file"):
        await ars.create_asset(child, allocation_mb=1)
    await ars.upload_file(minimal(parent), "p.tif", b"parent")
    created = await ars.create_asset(child, allocation_mb=1)
    assert created.parent_guid == parent.asset_guid


async def test_admin_api_sets_faults_over_http(sim: ArsSimulator, ars: ArsClient) -> None:
    async with httpx.AsyncClient(base_url=sim.root_url) as admin:
        response = await admin.post("/_admin/faults", json={"fail_next": 1})
        assert response.status_code == 200
        bad = await admin.post("/_admin/faults", json={"no_such_fault": 1})
        assert bad.status_code == 400
        with pytest.raises(ArsNotFound):
            await ars.get_asset("unknown")
        log = (await admin.get("/_admin/requests")).json()
    assert [entry["outcome"] for entry in log] == ["error", "ok", "ok"]  # token x2, then GET
