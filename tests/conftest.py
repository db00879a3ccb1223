"""Shared fixtures: a real MongoDB wire-protocol server for the whole session (SecantusDB
started as a separate process, or the MongoDB named by DASSCOD_TEST_MONGO_URI), and a fresh
database per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from dasscod.devstack.mongo import mongo_server
from dasscod.model import Metadata, Track
from dasscod.pipelines import load_pipelines
from dasscod.store import Stores


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mongo_server(tmp_path_factory.mktemp("mongo")) as uri:
        yield uri


@pytest.fixture
async def stores(mongo_uri: str) -> AsyncIterator[Stores]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    s = Stores.connect(mongo_uri, name, load_pipelines())
    await s.ensure_indexes()
    try:
        yield s
    finally:
        await s.client.drop_database(name)
        await s.close()


def make_metadata(guid: str, **changes: object) -> Metadata:
    data: dict[str, object] = {
        "asset_guid": guid,
        "institution": "NHMD",
        "collection": "Vascular plants",
        "pipeline_name": "PIPEHERB0001",
        "workstation_name": "WORKHERB0001",
        "digitiser": "Test Digitiser",
        "date_asset_taken": datetime.fromisoformat("2024-10-05T10:00:00+02:00"),
        "file_format": "tif",
    }
    data.update(changes)
    return Metadata.model_validate(data)


def make_track(guid: str, pipeline_name: str = "PIPEHERB0001") -> Track:
    pipeline = load_pipelines()[pipeline_name]
    return Track.model_validate(
        {"_id": guid, "pipeline": pipeline_name, "job_list": pipeline.initial_jobs()}
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path
