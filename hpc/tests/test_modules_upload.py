"""The upload module: derivative files checked against their registration, never reported as
uploaded when they are not in ARS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dassco_hpc.errors import ModuleFailed
from dassco_hpc.modules import upload
from dassco_hpc.results import normalise
from listener_stub import StubListener
from module_fixtures import GUID, context, link_for


def derivative(workdir: Path, suffix: str, data: bytes) -> Path:
    folder = workdir / "derivatives"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{GUID}-{suffix}.jpg"
    path.write_bytes(data)
    return path


def registered(stub: StubListener, path: Path, **changes: Any) -> None:
    guid = path.stem
    stub.gets[f"/assets/{guid}/links"] = {
        "asset_guid": guid,
        "files": [{**link_for(path), "ars_link": None, "local_path": None, **changes}],
    }


def test_registered_derivatives_are_verified_and_handed_to_the_daemon(
    stub: StubListener, tmp_path: Path
) -> None:
    logs: list[str] = []
    ctx = context(stub, tmp_path / "work", job="upload", logs=logs)
    jpeg = derivative(ctx.workdir, "jpeg", b"J" * 5000)
    thumb = derivative(ctx.workdir, "thumb", b"T" * 300)
    registered(stub, jpeg)
    registered(stub, thumb)
    out = upload.run(ctx)
    assert normalise(out)["derivatives"] == out["derivatives"]  # the listener takes it
    assert out == {"derivatives": [f"{GUID}-jpeg", f"{GUID}-thumb"]}
    puts = [(r.path, r.body) for r in stub.requests if r.method == "PUT"]
    assert puts == [
        (f"/assets/{GUID}-jpeg/files/{jpeg.name}", b"J" * 5000),
        (f"/assets/{GUID}-thumb/files/{thumb.name}", b"T" * 300),
    ]
    assert all("handed to the daemon" in line for line in logs)
    # The daemon's sync takes it from there: no derivative-uploaded callback.
    assert not [r for r in stub.requests if r.method == "POST"]


def test_an_asset_without_derivatives_has_nothing_to_upload(
    stub: StubListener, tmp_path: Path
) -> None:
    ctx = context(stub, tmp_path / "work", job="upload")
    assert upload.run(ctx) == {"derivatives": []}
    assert stub.requests == []


@pytest.mark.parametrize(
    ("changes", "why"),
    [({"check_sum": 1}, "CRC-32"), ({"file_size": 1.0}, "registered as"), ({"name": "x.jpg"},
                                                                             "not registered")],
)
def test_a_file_that_differs_from_its_registration_fails_retryably(
    stub: StubListener, tmp_path: Path, changes: dict[str, Any], why: str
) -> None:
    ctx = context(stub, tmp_path / "work", job="upload")
    registered(stub, derivative(ctx.workdir, "jpeg", b"J" * 5000), **changes)
    with pytest.raises(ModuleFailed) as failed:
        upload.run(ctx)
    assert why in failed.value.reason and failed.value.retryable
