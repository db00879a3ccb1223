"""`load` (local files, verified) and `clean_up` (inside the work folder only)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from dassco_hpc.errors import ModuleFailed
from dassco_hpc.modules import clean_up, load
from dassco_hpc.undelivered import FILENAME
from listener_stub import StubListener
from module_fixtures import GUID, context, link_for

LINKS = f"/assets/{GUID}/links"


def _files(tmp_path: Path) -> list[Path]:
    shared = tmp_path / "shared"
    shared.mkdir()
    a, b = shared / f"{GUID}.tif", shared / f"{GUID}.json"
    a.write_bytes(os.urandom(300_000))
    b.write_text('{"asset_guid": "asset-1"}')
    return [a, b]


def test_files_are_copied_from_their_local_paths_and_verified(
    stub: StubListener, tmp_path: Path
) -> None:
    files = _files(tmp_path)
    stub.gets[LINKS] = {"asset_guid": GUID, "files": [link_for(p) for p in files]}
    ctx = context(stub, tmp_path / "work", job="load")
    assert load.run(ctx) == {"asset_ready": True}
    for p in files:
        assert (ctx.workdir / p.name).read_bytes() == p.read_bytes()
    assert sorted(p.name for p in ctx.workdir.iterdir()) == sorted(p.name for p in files)


def test_without_local_paths_the_asset_files_folder_is_used(
    stub: StubListener, tmp_path: Path
) -> None:
    files = _files(tmp_path)
    stub.gets[LINKS] = {"asset_guid": GUID, "files": [link_for(p, local=False) for p in files]}
    ctx = context(stub, tmp_path / "work", job="load", asset_files=files[0].parent)
    assert load.run(ctx) == {"asset_ready": True}
    assert (ctx.workdir / files[0].name).exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [({"check_sum": 12345}, "CRC-32"), ({"file_size": 0.1}, "bytes")],
)
def test_a_checksum_or_size_mismatch_is_retryable_and_leaves_nothing(
    stub: StubListener, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    files = _files(tmp_path)
    stub.gets[LINKS] = {"asset_guid": GUID, "files": [{**link_for(files[0]), **change}]}
    ctx = context(stub, tmp_path / "work", job="load")
    with pytest.raises(ModuleFailed, match=message) as caught:
        load.run(ctx)
    assert caught.value.retryable is True
    assert list(ctx.workdir.iterdir()) == []


def test_without_a_shared_disk_the_file_is_downloaded_from_the_daemon(
    stub: StubListener, tmp_path: Path
) -> None:
    files = _files(tmp_path)
    links = [link_for(p, local=False) for p in files]
    stub.gets[LINKS] = {"asset_guid": GUID, "files": links}
    for path in files:
        stub.gets[f"/assets/{GUID}/files/{path.name}"] = path.read_bytes()
    ctx = context(stub, tmp_path / "work", job="load")  # no DASSCO_ASSET_FILES
    assert ctx.asset_files is None
    assert load.run(ctx) == {"asset_ready": True}
    for path in files:
        assert (ctx.workdir / path.name).read_bytes() == path.read_bytes()
    assert not list(ctx.workdir.glob(".*.download"))


def test_a_corrupt_download_is_retryable_and_leaves_nothing(
    stub: StubListener, tmp_path: Path
) -> None:
    files = _files(tmp_path)
    stub.gets[LINKS] = {"asset_guid": GUID, "files": [link_for(files[0], local=False)]}
    stub.gets[f"/assets/{GUID}/files/{files[0].name}"] = b"not the image"
    ctx = context(stub, tmp_path / "work", job="load")
    with pytest.raises(ModuleFailed, match="CRC-32") as caught:
        load.run(ctx)
    assert caught.value.retryable is True
    assert list(ctx.workdir.iterdir()) == []


def test_a_missing_source_is_retryable(stub: StubListener, tmp_path: Path) -> None:
    files = _files(tmp_path)
    link = link_for(files[0])
    files[0].unlink()
    stub.gets[LINKS] = {"asset_guid": GUID, "files": [link]}
    with pytest.raises(ModuleFailed, match="not found") as caught:
        load.run(context(stub, tmp_path / "work", job="load"))
    assert caught.value.retryable is True


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([], "no files"),
        ([{"name": "../evil.tif", "check_sum": 1, "file_size": 1, "local_path": "/x"}], "bad"),
        ([{"name": "a\\b.tif", "check_sum": 1, "file_size": 1, "local_path": "/x"}], "ASCII"),
        ([{"name": "a.tif", "local_path": "/x"}], "check_sum"),
    ],
)
def test_listings_that_cannot_work_fail_for_good(
    stub: StubListener, tmp_path: Path, files: list[dict[str, Any]], message: str
) -> None:
    stub.gets[LINKS] = {"asset_guid": GUID, "files": files}
    with pytest.raises(ModuleFailed, match=message) as caught:
        load.run(context(stub, tmp_path / "work", job="load"))
    assert caught.value.retryable is False


def test_clean_up_empties_the_work_folder_but_not_what_it_links_to(
    stub: StubListener, tmp_path: Path
) -> None:
    outside = tmp_path / "shared"
    outside.mkdir()
    (outside / "keep.tif").write_text("shared file")
    ctx = context(stub, tmp_path / "work" / GUID, job="clean_up")
    (ctx.workdir / f"{GUID}.tif").write_text("image")
    (ctx.workdir / "derivatives").mkdir()
    (ctx.workdir / "derivatives" / "d.jpg").write_text("jpeg")
    (ctx.workdir / "link-to-shared").symlink_to(outside, target_is_directory=True)
    (ctx.workdir / FILENAME).write_text("{}\n")
    assert clean_up.run(ctx) == {"clean_up": True}
    assert [p.name for p in ctx.workdir.iterdir()] == [FILENAME]
    assert (outside / "keep.tif").read_text() == "shared file"


@pytest.mark.parametrize("where", ["/", "home", "symlink"])
def test_clean_up_refuses_unsafe_folders(stub: StubListener, tmp_path: Path, where: str) -> None:
    if where == "/":
        folder = Path("/")
    elif where == "home":
        folder = Path.home()
    else:
        real = tmp_path / "real"
        real.mkdir()
        (real / "data").write_text("x")
        folder = tmp_path / "work-link"
        folder.symlink_to(real, target_is_directory=True)
    ctx = context(stub, tmp_path / "work", job="clean_up")
    ctx = type(ctx)(**{**ctx.__dict__, "workdir": folder})
    with pytest.raises(ModuleFailed) as caught:
        clean_up.run(ctx)
    assert caught.value.retryable is False
    if where == "symlink":
        assert (tmp_path / "real" / "data").exists()
