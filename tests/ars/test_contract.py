"""Contract checks: the client's calls against an ARS, by default the simulator.

The same checks run against a real (test) ARS when its coordinates are in the environment, so
pointing them at ARS is a configuration change, not new code:

    DASSCOD_ARS_CONTRACT_URL            asset service root, e.g. https://storage.test.dassco.dk/ars/api
    DASSCOD_ARS_CONTRACT_FILE_PROXY_URL file proxy root, e.g. https://storage.test.dassco.dk/file_proxy/api
    DASSCOD_ARS_CONTRACT_TOKEN_URL      Keycloak token endpoint
    DASSCOD_ARS_CONTRACT_CLIENT_ID / DASSCOD_ARS_CONTRACT_CLIENT_SECRET
    DASSCOD_ARS_CONTRACT_INSTITUTION / _COLLECTION / _WORKSTATION / _PIPELINE
                                        must exist in that ARS (the workstation IN_SERVICE)
    DASSCOD_ARS_CONTRACT_SYNC_TIMEOUT_S how long to wait for ERDA (default 600)

Each check creates its own uniquely named asset and marks it deleted at the end. Checks that
need a fault on demand (ERDA failing, 5xx, throttling) live in the simulator-only modules.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from dasscod.ars import (
    ArsBadRequest,
    ArsChecksumMismatch,
    ArsClient,
    ArsConflict,
    ArsError,
    ArsNotFound,
    ArsRejected,
    Asset,
    AssetUpdateRequest,
    InternalStatus,
    MinimalAsset,
    crc32,
)
from dasscod.ars.settings import ArsSettings
from dasscod.devstack.ars import ArsSimulator
from tests.ars.conftest import (
    COLLECTION,
    INSTITUTION,
    PIPELINE,
    WORKSTATION,
    eventually,
    make_asset,
    minimal,
)

ENV = "DASSCOD_ARS_CONTRACT_"


@dataclass
class Target:
    client: ArsClient
    institution: str
    collection: str
    workstation: str
    pipeline: str
    sync_timeout_s: float
    created: list[str]

    def asset(self) -> Asset:
        asset = make_asset(
            institution=self.institution,
            collection=self.collection,
            workstation=self.workstation,
            pipeline=self.pipeline,
        )
        self.created.append(asset.asset_guid)
        return asset


def _real_settings() -> ArsSettings:
    return ArsSettings(
        base_url=os.environ[ENV + "URL"],
        file_proxy_url=os.environ.get(ENV + "FILE_PROXY_URL"),
        token_url=os.environ[ENV + "TOKEN_URL"],
        client_id=os.environ[ENV + "CLIENT_ID"],
        client_secret=os.environ[ENV + "CLIENT_SECRET"],
    )


@pytest.fixture(params=["simulator", "ars"])
async def target(request: pytest.FixtureRequest, sim: ArsSimulator) -> AsyncIterator[Target]:
    created: list[str] = []
    if request.param == "ars":
        if not os.environ.get(ENV + "URL"):
            pytest.skip(f"no real ARS configured ({ENV}URL and friends unset)")
        async with ArsClient(_real_settings()) as client:
            yield Target(
                client,
                os.environ.get(ENV + "INSTITUTION", INSTITUTION),
                os.environ.get(ENV + "COLLECTION", COLLECTION),
                os.environ.get(ENV + "WORKSTATION", WORKSTATION),
                os.environ.get(ENV + "PIPELINE", PIPELINE),
                float(os.environ.get(ENV + "SYNC_TIMEOUT_S", "600")),
                created,
            )
            for guid in created:
                with contextlib.suppress(ArsError):
                    await client.delete_asset(guid)
        return
    async with ArsClient(sim.settings()) as client:
        yield Target(client, INSTITUTION, COLLECTION, WORKSTATION, PIPELINE, 5.0, created)


async def test_create_read_update_and_events(target: Target) -> None:
    ars, asset = target.client, target.asset()
    created = await ars.create_asset(asset, allocation_mb=5)
    assert created.asset_guid == asset.asset_guid
    assert created.http_info is not None and created.http_info.ok
    assert created.http_info.allocated_storage_mb == 5
    assert created.internal_status == InternalStatus.METADATA_RECEIVED

    read = await ars.get_asset(asset.asset_guid)
    assert (read.institution, read.collection) == (target.institution, target.collection)

    changed = read.model_copy(update={"funding": "Novo Nordisk", "update_user": "dasscod-test"})
    updated = await ars.update_asset(changed)
    assert updated.funding == "Novo Nordisk"
    assert (await ars.get_asset(asset.asset_guid)).funding == "Novo Nordisk"

    events = await ars.events(asset.asset_guid)
    assert [e.event for e in events][-1] == "UPDATE_ASSET_METADATA"

    status = await ars.asset_status(asset.asset_guid)
    assert status.status == InternalStatus.METADATA_RECEIVED
    assert status.share_allocation_mb == 5


async def test_unknown_asset_is_not_found(target: Target) -> None:
    with pytest.raises(ArsNotFound):
        await target.client.get_asset("dasscod-test-does-not-exist")


async def test_duplicate_create_is_rejected(target: Target) -> None:
    ars, asset = target.client, target.asset()
    await ars.create_asset(asset, allocation_mb=1)
    with pytest.raises(ArsRejected):
        await ars.create_asset(asset, allocation_mb=1)


async def test_set_status_accepts_only_the_manual_statuses(target: Target) -> None:
    ars, asset = target.client, target.asset()
    await ars.create_asset(asset, allocation_mb=1)
    await ars.set_status(asset.asset_guid, InternalStatus.ERDA_ERROR, error_message="test")
    status = await ars.asset_status(asset.asset_guid)
    assert status.status == InternalStatus.ERDA_ERROR
    assert status.error_message == "test"
    with pytest.raises(ValueError):  # refused before anything is sent
        await ars.set_status(asset.asset_guid, InternalStatus.COMPLETED)


async def test_upload_list_download_and_checksum(target: Target) -> None:
    ars, asset = target.client, target.asset()
    await ars.create_asset(asset, allocation_mb=2)
    where = minimal(asset)
    data = b"II*\x00" + bytes(range(256)) * 100
    result = await ars.upload_file(where, f"{asset.asset_guid}.tif", data)
    assert result.expected_crc == result.actual_crc == crc32(data)
    links = await ars.list_share_files(where)
    assert any(link.endswith(f"/{asset.asset_guid}.tif") for link in links)
    assert await ars.download_file(where, f"{asset.asset_guid}.tif") == data

    with pytest.raises(ArsChecksumMismatch) as caught:
        await ars.upload_file(where, "bad.tif", data, crc=crc32(data) ^ 1)
    assert caught.value.actual == crc32(data)
    with pytest.raises(ArsNotFound):
        await ars.download_file(where, "bad.tif")


async def test_upload_beyond_the_allocation_is_refused(target: Target) -> None:
    ars, asset = target.client, target.asset()
    await ars.create_asset(asset, allocation_mb=1)
    with pytest.raises(ArsBadRequest):
        await ars.upload_file(minimal(asset), "big.tif", b"x" * 1_500_000)


async def test_second_share_is_refused_and_allocation_can_grow(target: Target) -> None:
    ars, asset = target.client, target.asset()
    await ars.create_asset(asset, allocation_mb=1)
    with pytest.raises(ArsConflict):
        await ars.create_share(minimal(asset), allocation_mb=1)
    info = await ars.change_allocation(asset.asset_guid, new_allocation_mb=3)
    assert info.allocated_storage_mb == 3
    await ars.upload_file(minimal(asset), "big.tif", b"x" * 1_500_000)


async def test_upload_without_a_share_is_refused(target: Target) -> None:
    ars, asset = target.client, target.asset()
    await ars.create_asset(asset, allocation_mb=1)
    await ars.delete_share(asset.asset_guid)
    with pytest.raises(ArsBadRequest):
        await ars.upload_file(minimal(asset), "late.tif", b"late")
    assert (await ars.asset_status(asset.asset_guid)).share_allocation_mb is None
    info = await ars.create_share(minimal(asset), allocation_mb=1)  # reopening is fine
    assert info.ok


async def test_erda_sync_completes(target: Target) -> None:
    ars, asset = target.client, target.asset()
    await ars.create_asset(asset, allocation_mb=1)
    where: MinimalAsset = minimal(asset)
    await ars.upload_file(where, f"{asset.asset_guid}.tif", b"pixels")
    await ars.synchronize(
        asset.asset_guid, workstation=target.workstation, pipeline=target.pipeline
    )

    async def completed() -> bool | None:
        status = await ars.asset_status(asset.asset_guid)
        assert status.status not in (InternalStatus.ERDA_ERROR, InternalStatus.ERDA_FAILED)
        return True if status.status == InternalStatus.COMPLETED else None

    await eventually(completed, timeout_s=target.sync_timeout_s, interval_s=0.02)
    assert (await ars.asset_status(asset.asset_guid)).share_allocation_mb is None
    files = await ars.list_files(asset.asset_guid)
    assert any(f.endswith(f"{asset.asset_guid}/{asset.asset_guid}.tif") for f in files)


async def test_complete_and_unlock(target: Target) -> None:
    ars, asset = target.client, target.asset()
    await ars.create_asset(asset, allocation_mb=1)
    await ars.complete_asset(
        AssetUpdateRequest(
            minimal_asset=minimal(asset), workstation=target.workstation, pipeline=target.pipeline
        )
    )
    assert (await ars.asset_status(asset.asset_guid)).status == InternalStatus.COMPLETED
    await ars.unlock_asset(asset.asset_guid)
    assert (await ars.get_asset(asset.asset_guid)).asset_locked is False
