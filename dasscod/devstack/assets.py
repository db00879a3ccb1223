"""The helpers the tests and the benchmark share: an asset's documents as the intake would
write them, an asset with files in the stores, and the ARS sync running against the stores."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

from dasscod.ars import ArsClient
from dasscod.ars.health import CircuitBreaker
from dasscod.ars.settings import ArsSettings
from dasscod.delivery import BYTES_PER_MB, file_entry
from dasscod.model import Metadata, Track
from dasscod.pipelines import load_pipelines
from dasscod.store import Stores
from dasscod.supervisors.ars_sync import ArsSync, SyncOptions

PIPELINE = "PIPEHERB0001"


def make_metadata(guid: str, **changes: object) -> Metadata:
    """A herbarium sheet's metadata, with `changes` on top."""
    data: dict[str, object] = {
        "asset_guid": guid,
        "institution": "NHMD",
        "collection": "Vascular plants",
        "pipeline_name": PIPELINE,
        "workstation_name": "WORKHERB0001",
        "digitiser": "Test Digitiser",
        "date_asset_taken": datetime.fromisoformat("2024-10-05T10:00:00+02:00"),
        "file_format": "tif",
    }
    data.update(changes)
    return Metadata.model_validate(data)


def make_track(guid: str, pipeline_name: str = PIPELINE) -> Track:
    """A new asset's track document: every job of its pipeline waiting."""
    pipeline = load_pipelines()[pipeline_name]
    return Track.model_validate(
        {"_id": guid, "pipeline": pipeline_name, "job_list": pipeline.initial_jobs()}
    )


async def add_asset(
    stores: Stores,
    root: Path,
    asset_guid: str,
    *,
    files: dict[str, bytes] | None = None,
    parent: str | None = None,
    metadata: dict[str, object] | None = None,
    **track_fields: Any,
) -> Track:
    """An asset whose files are in `root/<guid>/` (the work area), with its metadata and
    track documents inserted; `metadata` and `track_fields` change the defaults."""
    files = {"a.tif": b"pixels of " + asset_guid.encode()} if files is None else files
    folder = root / asset_guid
    folder.mkdir(parents=True)
    entries = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        entries.append(file_entry(folder / name))
    md_changes: dict[str, object] = {"parent_guid": parent} if parent else {}
    await stores.metadata.insert(make_metadata(asset_guid, **md_changes, **(metadata or {})))
    track = make_track(asset_guid).model_copy(
        update={
            "file_list": entries,
            "asset_size": sum(len(d) for d in files.values()) / BYTES_PER_MB,
            "temporary_path_local": str(folder),
            "parent_guid": parent,
            **track_fields,
        }
    )
    return await stores.track.insert(track)


@contextlib.asynccontextmanager
async def running_sync(
    settings: ArsSettings,
    stores: Stores,
    options: SyncOptions,
    *,
    breaker: CircuitBreaker | None = None,
) -> AsyncIterator[ArsSync]:
    """The ARS sync in the background, woken by the store's writes (as in the daemon)."""
    stopping = anyio.Event()
    async with ArsClient(settings) as client:
        sync = ArsSync(stores, client, stopping=stopping, options=options, breaker=breaker)
        unsubscribe = stores.track.subscribe(sync.offer)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sync.run)
                yield sync
                stopping.set()
        finally:
            unsubscribe()
