"""Shared fixtures: a real MongoDB wire-protocol server for the whole session (SecantusDB
started as a separate process, or the MongoDB named by DASSCOD_TEST_MONGO_URI), and a fresh
database per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dasscod.devstack.assets import make_metadata as make_metadata
from dasscod.devstack.assets import make_track as make_track
from dasscod.devstack.mongo import mongo_server
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


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path
