"""Helpers of the image-module tests: a JobContext on the stub listener, and synthetic sheets
drawn once per test session (small, so that the suite stays fast)."""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path
from typing import Any

from dassco_hpc.client import CallbackClient
from dassco_hpc.context import JobContext
from listener_stub import StubListener

TOKEN = "test-token"
GUID = "asset-1"
SIZE = (1200, 1800)
PARENT_METADATA: dict[str, Any] = {
    "asset_guid": GUID,
    "institution": "NHMD",
    "collection": "Vascular plants",
    "pipeline_name": "PIPEHERB0001",
    "workstation_name": "WORKHERB0001",
    "date_asset_taken": "2024-10-05T10:00:00+00:00",
    "file_format": "tif",
    "payload_type": "image",
    "barcode": [],
    "asset_pid": "pid-of-parent",
}


def context(
    stub: StubListener,
    workdir: Path,
    *,
    guid: str = GUID,
    job: str = "barcode",
    asset_files: Path | None = None,
    logs: list[str] | None = None,
) -> JobContext:
    workdir.mkdir(parents=True, exist_ok=True)
    client = CallbackClient(
        base_url=stub.base_url, token=TOKEN, deadline_s=2.0, backoff_s=0.01, timeout_s=2.0
    )
    sink = logs if logs is not None else []
    return JobContext(
        guid=guid,
        job=job,
        attempt=1,
        workdir=workdir,
        asset_files=asset_files,
        client=client,
        logger=sink.append,
    )


def with_image(workdir: Path, image: Path, name: str | None = None) -> Path:
    """Put an image into the work folder as `load` would."""
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / (name or image.name)
    shutil.copyfile(image, target)
    return target


def link_for(path: Path, *, local: bool = True) -> dict[str, Any]:
    data = path.read_bytes()
    return {
        "name": path.name,
        "type": path.suffix.lstrip("."),
        "check_sum": zlib.crc32(data),
        "file_size": len(data) / 1_000_000,
        "ars_link": f"https://ars.example/{path.name}",
        "local_path": str(path) if local else None,
    }
