"""Fixtures for the ARS client tests: a fresh simulator over real HTTP per test, a client for
it, and a deadline-bounded wait for asynchronous outcomes (ERDA sync)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import anyio
import pytest

from dasscod.ars import ArsClient, Asset, MinimalAsset
from dasscod.devstack.ars import ArsSimulator, ars_simulator

T = TypeVar("T")

INSTITUTION = "NHMD"
COLLECTION = "Vascular plants"
WORKSTATION = "WORKHERB0001"
PIPELINE = "PIPEHERB0001"


@pytest.fixture(scope="session")
async def sim_server() -> AsyncIterator[ArsSimulator]:
    async with ars_simulator() as simulator:
        yield simulator


@pytest.fixture
def sim(sim_server: ArsSimulator) -> ArsSimulator:
    """The session's simulator, reset to a fresh state for this test."""
    sim_server.reset()
    return sim_server


@pytest.fixture
async def ars(sim: ArsSimulator) -> AsyncIterator[ArsClient]:
    async with ArsClient(sim.settings()) as client:
        yield client


def new_guid() -> str:
    return f"dasscod-test-{uuid.uuid4().hex[:16]}"


def make_asset(
    guid: str | None = None,
    *,
    institution: str = INSTITUTION,
    collection: str = COLLECTION,
    workstation: str = WORKSTATION,
    pipeline: str = PIPELINE,
) -> Asset:
    guid = guid or new_guid()
    return Asset(
        asset_guid=guid,
        asset_pid=f"pid-{guid}",
        status="WORKING_COPY",
        institution=institution,
        collection=collection,
        workstation=workstation,
        pipeline=pipeline,
        digitiser="Test Digitiser",
        payload_type="image",
        subject="specimen",
        file_formats=["TIF"],
        multi_specimen=False,
        restricted_access=[],
        tags={"metadataTemplate": "v2_1_0"},
        date_asset_taken=datetime(2024, 10, 5, 8, 0, tzinfo=UTC),
        update_user="dasscod-test",
    )


def minimal(asset: Asset) -> MinimalAsset:
    assert asset.institution and asset.collection
    return MinimalAsset(
        asset_guid=asset.asset_guid, institution=asset.institution, collection=asset.collection
    )


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout_s: float = 5.0, interval_s: float = 0.01
) -> T:
    """Poll `probe` until it returns something other than None, or fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await anyio.sleep(interval_s)
