"""The intake API against hostile uploads: what folder intake refuses is a 4xx here, with the
reason, and nothing is kept; the multipart parser's own bounds hold before the route runs."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import pytest
from anyio import to_thread

from dasscod.delivery import MAX_FILES, MAX_METADATA_BYTES
from dasscod.listener.app import create_app
from dasscod.store import Stores
from dasscod.supervisors.intake import IntakeSupervisor
from tests.integration.test_intake import meta
from tests.integration.test_intake_api import IMAGE, SECRET, TOKEN, client, intake, upload

__all__ = ["client", "intake"]  # the fixtures

BOUNDARY = "hostile-boundary-0123456789"


def multipart(parts: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """A request of raw parts (headers, body), for what httpx would not send by itself."""
    body = b"".join(b"--" + BOUNDARY.encode() + b"\r\n" + headers + b"\r\n\r\n" + data + b"\r\n"
                    for headers, data in parts) + b"--" + BOUNDARY.encode() + b"--\r\n"
    return {"content": body, "headers": {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}}


def metadata_part(metadata: dict[str, Any] | str) -> tuple[bytes, bytes]:
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    return b'Content-Disposition: form-data; name="metadata"', text.encode()


def file_part(name: bytes, data: bytes = IMAGE) -> tuple[bytes, bytes]:
    return (b'Content-Disposition: form-data; name="files"; filename="' + name + b'"\r\n'
            b"Content-Type: image/tiff", data)


async def nothing_kept(stores: Stores, intake: IntakeSupervisor, root: Path) -> None:
    assert await stores.track.collection.count_documents({}) == 0
    assert await stores.metadata.collection.count_documents({}) == 0
    staging = intake.work_area / ".incoming"
    assert not staging.exists() or list(staging.iterdir()) == []
    assert [p.name for p in intake.work_area.iterdir() if p.name != ".incoming"] == []
    assert not any(p.name.startswith("evil") for p in await to_thread.run_sync(
        lambda: list(root.rglob("*"))))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"tags": ' + "[" * 50_000 + "]" * 50_000 + "}", "nested too deeply"),
        (json.dumps(meta("api-h1"))[:-1] + ', "asset_guid": "api-h2"}', "given twice"),
        (json.dumps(meta("api-h3"))[:-1] + ', "note": NaN}', "NaN is not a number"),
        (json.dumps(meta("api-h4"))[:-1] + ', "note": "\\udc80"}', "cannot be stored"),
        (json.dumps(meta("api-h5", _id="victim")), "the daemon writes those fields itself"),
        (json.dumps(meta("api-h6", **{"$set": {"x": 1}})), "starts with '$'"),
        (json.dumps(meta("api-h7", parent_guid="../../x")), "is not the guid of another asset"),
    ],
    ids=["deep", "duplicate-key", "nan", "lone-surrogate", "owned-field", "operator",
         "parent-path"],
)
async def test_metadata_folder_intake_refuses_is_422_here(
    client: httpx.AsyncClient, stores: Stores, intake: IntakeSupervisor, tmp_path: Path,
    text: str, expected: str,
) -> None:
    answer = await client.post("/api/v1/assets", **upload(text))
    assert answer.status_code == 422, answer.text
    assert expected in answer.json()["detail"]
    await nothing_kept(stores, intake, tmp_path)


@pytest.mark.parametrize(
    "name",
    [b"../evil.tif", b"sub/evil.tif", b"/tmp/evil.tif", b"..\\evil.tif", b"..", b".",
     b".evil.tif", b"evil\n.tif", b"evil\xff.tif", b"C:evil.tif", b""],
)
async def test_a_file_name_that_is_a_path_or_not_plain_is_422_and_writes_nothing(
    client: httpx.AsyncClient, stores: Stores, intake: IntakeSupervisor, tmp_path: Path,
    name: bytes,
) -> None:
    answer = await client.post("/api/v1/assets",
                               **multipart([metadata_part(meta("api-n1")), file_part(name)]))
    assert answer.status_code in (400, 422), answer.text
    await nothing_kept(stores, intake, tmp_path)


async def test_names_differing_only_in_case_are_422(
    client: httpx.AsyncClient, stores: Stores, intake: IntakeSupervisor, tmp_path: Path,
) -> None:
    answer = await client.post("/api/v1/assets", **upload(meta("api-c1"),
                                                          {"a.tif": IMAGE, "A.TIF": IMAGE}))
    assert answer.status_code == 422
    assert "differ only in case" in answer.json()["detail"]
    await nothing_kept(stores, intake, tmp_path)


async def test_more_files_than_a_delivery_holds_is_400_before_the_route(
    client: httpx.AsyncClient, stores: Stores, intake: IntakeSupervisor, tmp_path: Path,
) -> None:
    parts = [metadata_part(meta("api-m1"))]
    parts += [file_part(f"f{n}.tif".encode(), b"x") for n in range(MAX_FILES + 1)]
    answer = await client.post("/api/v1/assets", **multipart(parts))
    assert answer.status_code == 400, answer.text
    assert "Too many files" in answer.text
    await nothing_kept(stores, intake, tmp_path)


async def test_extra_text_parts_are_400(
    client: httpx.AsyncClient, stores: Stores, intake: IntakeSupervisor, tmp_path: Path,
) -> None:
    parts = [metadata_part(meta("api-m2"))]
    parts += [(f'Content-Disposition: form-data; name="x{n}"'.encode(), b"y") for n in range(50)]
    answer = await client.post("/api/v1/assets", **multipart([*parts, file_part(b"a.tif")]))
    assert answer.status_code == 400, answer.text
    await nothing_kept(stores, intake, tmp_path)


async def test_a_metadata_part_larger_than_a_metadata_file_is_400(
    client: httpx.AsyncClient, stores: Stores, intake: IntakeSupervisor, tmp_path: Path,
) -> None:
    padded = json.dumps(meta("api-m3")) + " " * MAX_METADATA_BYTES
    answer = await client.post("/api/v1/assets",
                               **multipart([metadata_part(padded), file_part(b"a.tif")]))
    assert answer.status_code == 400, answer.text
    await nothing_kept(stores, intake, tmp_path)


@pytest.mark.parametrize("where", ["filename", "many-headers"])
async def test_huge_part_headers_are_400(
    client: httpx.AsyncClient, stores: Stores, intake: IntakeSupervisor, tmp_path: Path,
    where: str,
) -> None:
    if where == "filename":
        bad = file_part(b"a" * 8000 + b".tif")
    else:
        headers = b'Content-Disposition: form-data; name="files"; filename="a.tif"'
        bad = (headers + b"".join(b"\r\nX-Pad-%d: y" % n for n in range(20)), IMAGE)
    answer = await client.post("/api/v1/assets",
                               **multipart([metadata_part(meta("api-m4")), bad]))
    assert answer.status_code == 400, answer.text
    await nothing_kept(stores, intake, tmp_path)


async def test_an_upload_of_many_parts_is_not_held_in_memory(
    stores: Stores, intake: IntakeSupervisor, tmp_path: Path,
) -> None:
    # 200 parts of 256 KB: Starlette kept each part in memory up to 1 MB (51 MB here; 200 MB
    # for 200 parts of 1 MB, per upload, before the route could refuse anything).
    app = create_app(stores, SECRET, intake=intake, intake_token=TOKEN, intake_max_mb=100)
    parts = [metadata_part(meta("api-mem"))]
    parts += [file_part(f"p{n}.tif".encode(), bytes([n % 251]) * 256_000)
              for n in range(MAX_FILES)]
    request = multipart(parts)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        tracemalloc.start()
        try:
            answer = await client.post("/api/v1/assets", **request)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert answer.status_code == 201, answer.text
    assert len(answer.json()["files"]) == MAX_FILES
    body = len(request["content"])
    # The test client hands the whole body over in one piece (a copy of it is traced); the
    # parts add at most 64 KB each (they added 51 MB, all of them, before).
    assert peak < body + MAX_FILES * 64 * 1024, f"peak {peak} for a body of {body}"
