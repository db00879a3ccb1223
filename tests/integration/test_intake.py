"""The intake supervisor against a real MongoDB-wire server and real folders."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from pymongo.errors import AutoReconnect, ExecutionTimeout, OperationFailure

from dasscod.delivery import REASON_FILE
from dasscod.model import Flag, JobStatus, Metadata, Track
from dasscod.pipelines import load_pipelines
from dasscod.settings import IntakeSettings
from dasscod.store import Stores
from dasscod.supervisors.intake import IntakeSupervisor

PIPELINES = load_pipelines()
HERB_JOBS = [j.name for j in PIPELINES["PIPEHERB0001"].jobs]


def meta(guid: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "asset_guid": guid,
        "institution": "NHMD",
        "collection": "Vascular plants",
        "pipeline_name": "PIPEHERB0001",
        "workstation_name": "WORKHERB0001",
        "digitiser": "Test Digitiser",
        "date_asset_taken": "2024-10-05T10:00:00+02:00",
        "file_format": "tif",
        "parent_guid": "",
    }
    data.update(changes)
    return data


def deliver(
    intake: Path,
    name: str,
    metadata: dict[str, Any] | str,
    images: dict[str, bytes] | None = None,
    *,
    ready: bool = True,
) -> Path:
    folder = intake / name
    folder.mkdir(parents=True)
    for file_name, data in (images if images is not None else {f"{name}.tif": b"II*\0tif"}).items():
        (folder / file_name).write_bytes(data)
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    (folder / f"{name}.json").write_text(text, encoding="utf-8")
    if ready:
        (folder / ".ready").touch()
    return folder


class Intake:
    """The supervisor under test plus its folders."""

    def __init__(self, root: Path, stores: Stores, settle_s: float = 30.0, *,
                 clock: Callable[[], float] | None = None, **settings: Any) -> None:
        self.settings = IntakeSettings(
            folder=root / "intake",
            work_area=root / "assets",
            quarantine=root / "quarantine",
            settle_s=settle_s,
            poll_s=0.05,
            **settings,
        )
        self.stores = stores
        self.new: list[Track] = []
        self.supervisor = IntakeSupervisor(self.settings, stores, PIPELINES, on_new=self.new.append,
                                           clock=clock or time.monotonic)
        for folder in (self.folder, self.work_area, self.quarantine):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def folder(self) -> Path:
        return self.settings.folder

    @property
    def work_area(self) -> Path:
        return self.settings.work_area

    @property
    def quarantine(self) -> Path:
        return self.settings.quarantine

    def quarantined(self) -> list[Path]:
        return sorted(self.quarantine.iterdir())

    def reason(self) -> str:
        (only,) = self.quarantined()
        return (only / REASON_FILE).read_text(encoding="utf-8")

    async def counts(self) -> tuple[int, int]:
        return (
            await self.stores.db["track"].count_documents({}),
            await self.stores.db["metadata"].count_documents({}),
        )


@pytest.fixture
def intake_factory(tmp_path: Path, stores: Stores) -> Callable[..., Intake]:
    def make(settle_s: float = 30.0) -> Intake:
        return Intake(tmp_path, stores, settle_s)

    return make


@pytest.fixture
def intake(intake_factory: Callable[..., Intake]) -> Intake:
    return intake_factory()


async def test_ready_delivery_is_taken(intake: Intake, stores: Stores):
    images = {"g1.tif": b"front" * 300, "g1-back.JPEG": b"back" * 250}
    deliver(intake.folder, "g1", meta("g1"), images)

    assert await intake.supervisor.scan_once() == 1

    track = await stores.track.get("g1")
    assert track is not None
    assert track.pipeline == "PIPEHERB0001"
    assert [j.name for j in track.job_list] == HERB_JOBS
    assert all(j.status is JobStatus.WAITING for j in track.job_list)
    assert track.jobs_status is JobStatus.WAITING
    assert track.ready == ["load"]  # derived fields filled in by the store
    assert track.batch_list_name == "WORKHERB0001_2024-10-05"
    assert track.parent_guid is None
    files = {f.name: f for f in track.file_list}
    assert set(files) == {"g1.tif", "g1-back.JPEG"}
    assert files["g1.tif"].check_sum == zlib.crc32(images["g1.tif"])
    assert files["g1.tif"].file_size == pytest.approx(1500 / 1_000_000)
    assert files["g1.tif"].type == "tif"
    assert files["g1-back.JPEG"].type == "jpeg"
    assert files["g1-back.JPEG"].check_sum == zlib.crc32(images["g1-back.JPEG"])
    assert track.asset_size == pytest.approx(2500 / 1_000_000)
    assert track.temporary_files_local is Flag.YES
    target = intake.work_area / "g1"
    assert track.temporary_path_local == str(target.absolute())

    doc = await stores.metadata.get("g1")
    assert doc is not None
    assert Metadata.model_validate(doc).collection == "Vascular plants"
    assert doc["metadata_version"] == 1

    assert sorted(p.name for p in target.iterdir()) == [
        ".ready",
        "g1-back.JPEG",
        "g1.json",
        "g1.tif",
    ]
    assert (target / "g1.tif").read_bytes() == images["g1.tif"]
    assert list(intake.folder.iterdir()) == []
    assert intake.quarantined() == []
    assert [t.id for t in intake.new] == ["g1"]

    assert await intake.supervisor.scan_once() == 0  # nothing left, nothing taken twice


async def test_delivery_without_marker_is_taken_once_settled(
    intake_factory: Callable[..., Intake], stores: Stores
):
    intake = intake_factory(settle_s=0.2)
    deliver(intake.folder, "g2", meta("g2"), ready=False)

    assert await intake.supervisor.scan_once() == 0
    assert await stores.track.get("g2") is None
    assert (intake.folder / "g2").is_dir()

    await anyio.sleep(0.25)
    assert await intake.supervisor.scan_once() == 1
    assert await stores.track.get("g2") is not None
    assert list(intake.folder.iterdir()) == []


async def test_file_still_being_written_is_not_taken(
    intake_factory: Callable[..., Intake], stores: Stores
):
    intake = intake_factory(settle_s=0.2)
    folder = deliver(intake.folder, "g3", meta("g3"), {"g3.tif": b"first part"}, ready=False)

    assert await intake.supervisor.scan_once() == 0
    await anyio.sleep(0.25)
    with (folder / "g3.tif").open("ab") as stream:
        stream.write(b", second part")  # the copy is still going on
    assert await intake.supervisor.scan_once() == 0
    assert await stores.track.get("g3") is None

    await anyio.sleep(0.25)
    assert await intake.supervisor.scan_once() == 1
    track = await stores.track.get("g3")
    assert track is not None
    assert track.file_list[0].check_sum == zlib.crc32(b"first part, second part")


@pytest.mark.parametrize(
    ("metadata", "images", "expected"),
    [
        ('{"asset_guid": "bad", "institution": ', None, "is not valid JSON"),
        (
            {k: v for k, v in meta("bad").items() if k != "workstation_name"},
            None,
            "workstation_name: Field required",
        ),
        (meta("bad", pipeline_name="PIPEUNKNOWN"), None, "unknown pipeline 'PIPEUNKNOWN'"),
        (meta("bad"), {}, "no image files"),
        (
            meta("bad", files=["bad.tif", "bad-2.tif"]),
            {"bad.tif": b"x"},
            "files listed in bad.json are missing: bad-2.tif",
        ),
    ],
    ids=["bad-json", "missing-field", "unknown-pipeline", "no-images", "listed-file-missing"],
)
async def test_bad_delivery_is_quarantined_with_reason(
    intake: Intake,
    metadata: dict[str, Any] | str,
    images: dict[str, bytes] | None,
    expected: str,
):
    deliver(intake.folder, "bad", metadata, images)

    assert await intake.supervisor.scan_once() == 0

    (moved,) = intake.quarantined()
    assert moved.name.startswith("bad-") and moved.name.endswith("Z")
    reason = intake.reason()
    assert expected in reason
    assert "move this folder back into the intake folder" in reason
    assert (moved / "bad.json").exists()
    assert list(intake.folder.iterdir()) == []
    assert list(intake.work_area.iterdir()) == []
    assert await intake.counts() == (0, 0)
    assert intake.new == []


async def test_duplicate_guid_is_quarantined_and_original_untouched(intake: Intake, stores: Stores):
    deliver(intake.folder, "first", meta("dup"), {"dup.tif": b"original"})
    assert await intake.supervisor.scan_once() == 1
    track_before = await stores.db["track"].find_one({"_id": "dup"})
    metadata_before = await stores.metadata.get("dup")

    deliver(intake.folder, "second", meta("dup", digitiser="Someone Else"), {"dup.tif": b"new"})
    assert await intake.supervisor.scan_once() == 0

    assert "asset dup is already registered" in intake.reason()
    assert await stores.db["track"].find_one({"_id": "dup"}) == track_before
    assert await stores.metadata.get("dup") == metadata_before
    assert (intake.work_area / "dup" / "dup.tif").read_bytes() == b"original"
    assert await intake.counts() == (1, 1)
    assert list(intake.folder.iterdir()) == []


async def test_fixed_delivery_moved_back_is_taken(intake: Intake, stores: Stores):
    deliver(intake.folder, "g4", meta("g4", pipeline_name="PIPETYPO"))
    await intake.supervisor.scan_once()
    (moved,) = intake.quarantined()

    (moved / "g4.json").write_text(json.dumps(meta("g4")), encoding="utf-8")
    moved.rename(intake.folder / "g4")
    assert await intake.supervisor.scan_once() == 1
    assert await stores.track.get("g4") is not None
    assert not (intake.work_area / "g4" / REASON_FILE).exists()


async def test_recover_finishes_a_take_interrupted_after_the_move(intake: Intake, stores: Stores):
    # A crash after step 2: the folder is in the work area, nothing is in the store.
    deliver(intake.work_area, "g5", meta("g5"), {"g5.tif": b"moved"})

    assert await intake.supervisor.recover() == 1

    track = await stores.track.get("g5")
    assert track is not None
    assert track.temporary_path_local == str((intake.work_area / "g5").absolute())
    assert track.file_list[0].check_sum == zlib.crc32(b"moved")
    assert await stores.metadata.get("g5") is not None
    assert [t.id for t in intake.new] == ["g5"]
    assert await intake.supervisor.recover() == 0  # idempotent


async def test_recover_after_metadata_was_written(intake: Intake, stores: Stores):
    # A crash after step 3: the metadata document exists (same content), the track does not.
    deliver(intake.work_area, "g6", meta("g6"))
    await stores.metadata.insert(Metadata.model_validate({**meta("g6"), "parent_guid": None}))

    assert await intake.supervisor.recover() == 1

    assert await stores.track.get("g6") is not None
    doc = await stores.metadata.get("g6")
    assert doc is not None and doc["metadata_version"] == 1
    assert await intake.counts() == (1, 1)


async def test_recover_quarantines_a_work_area_folder_with_different_metadata(
    intake: Intake, stores: Stores
):
    deliver(intake.work_area, "g7", meta("g7"))
    await stores.metadata.insert(
        Metadata.model_validate(meta("g7", digitiser="Other", parent_guid=None))
    )

    assert await intake.supervisor.recover() == 0

    assert "already exists and differs" in intake.reason()
    assert await stores.track.get("g7") is None
    assert list(intake.work_area.iterdir()) == []


async def test_recover_quarantines_an_invalid_work_area_folder(intake: Intake, stores: Stores):
    deliver(intake.work_area, "g8", "not json")
    assert await intake.supervisor.recover() == 0
    assert "is not valid JSON" in intake.reason()
    assert await intake.counts() == (0, 0)


async def test_interrupted_take_found_when_the_same_asset_is_delivered_again(
    intake: Intake, stores: Stores
):
    deliver(intake.work_area, "g9", meta("g9"), {"g9.tif": b"first copy"})
    deliver(intake.folder, "again", meta("g9"), {"g9.tif": b"second copy"})

    assert await intake.supervisor.scan_once() == 0

    track = await stores.track.get("g9")
    assert track is not None and track.file_list[0].check_sum == zlib.crc32(b"first copy")
    assert "asset g9 is already registered" in intake.reason()


async def test_mongodb_unreachable_before_the_move_leaves_the_delivery(
    intake: Intake, stores: Stores, monkeypatch: pytest.MonkeyPatch
):
    deliver(intake.folder, "g10", meta("g10"))
    real_get = stores.track.get
    failures = [AutoReconnect("connection refused")]

    async def flaky_get(guid: str, **kwargs: Any) -> Track | None:
        if failures:
            raise failures.pop()
        return await real_get(guid, **kwargs)

    monkeypatch.setattr(stores.track, "get", flaky_get)

    assert await intake.supervisor.scan_once() == 0
    assert (intake.folder / "g10").is_dir()
    assert intake.quarantined() == []

    assert await intake.supervisor.scan_once() == 1
    assert await stores.track.get("g10") is not None


@pytest.mark.parametrize("error", [
    OperationFailure("No space left on device", code=14031),
    ExecutionTimeout("operation exceeded time limit", code=50),
    OperationFailure("not authorized on dasscod to execute command", code=13),
])
async def test_any_mongodb_error_leaves_the_delivery_where_it_is(
    intake: Intake, stores: Stores, monkeypatch: pytest.MonkeyPatch, error: OperationFailure
):
    """A server-side failure or a client timeout says nothing about the delivery: it is not
    quarantined. A refusal no retry can fix (not authorised) goes up, to stop the daemon."""
    deliver(intake.folder, "g12", meta("g12"))
    real_get = stores.track.get
    failures = [error]

    async def failing_get(guid: str, **kwargs: Any) -> Track | None:
        if failures:
            raise failures.pop()
        return await real_get(guid, **kwargs)

    monkeypatch.setattr(stores.track, "get", failing_get)

    if error.code == 13:
        with pytest.raises(OperationFailure):
            await intake.supervisor.scan_once()
    else:
        assert await intake.supervisor.scan_once() == 0
    assert (intake.folder / "g12").is_dir()
    assert intake.quarantined() == []
    assert await intake.supervisor.scan_once() == 1


async def test_mongodb_unreachable_after_the_move_is_finished_next_scan(
    intake: Intake, stores: Stores, monkeypatch: pytest.MonkeyPatch
):
    deliver(intake.folder, "g11", meta("g11"))
    real_insert = stores.track.insert
    failures = [AutoReconnect("primary stepped down")]

    async def flaky_insert(track: Track) -> Track:
        if failures:
            raise failures.pop()
        return await real_insert(track)

    monkeypatch.setattr(stores.track, "insert", flaky_insert)

    assert await intake.supervisor.scan_once() == 0
    assert (intake.work_area / "g11").is_dir()  # moved, metadata written, no track yet
    assert await intake.counts() == (0, 1)

    assert await intake.supervisor.scan_once() == 1
    assert await intake.counts() == (1, 1)
    assert intake.quarantined() == []
    assert [t.id for t in intake.new] == ["g11"]


async def test_unexpected_error_quarantines_and_the_loop_goes_on(
    intake: Intake, stores: Stores, monkeypatch: pytest.MonkeyPatch
):
    deliver(intake.folder, "a-broken", meta("g12"))
    deliver(intake.folder, "b-fine", meta("g13"))
    real_insert = stores.metadata.insert

    async def broken_for_g12(metadata: Metadata) -> None:
        if metadata.asset_guid == "g12":
            raise RuntimeError("something nobody expected")
        await real_insert(metadata)

    monkeypatch.setattr(stores.metadata, "insert", broken_for_g12)

    assert await intake.supervisor.scan_once() == 1

    reason = intake.reason()
    assert "unexpected error while taking it: RuntimeError: something nobody expected" in reason
    assert await stores.track.get("g13") is not None
    assert await stores.track.get("g12") is None


async def test_ignored_entries(intake: Intake):
    (intake.folder / "empty").mkdir()
    (intake.folder / ".being-assembled").mkdir()
    (intake.folder / ".being-assembled" / "x.json").write_text("{}")
    (intake.folder / "loose.tif").write_bytes(b"x")

    assert await intake.supervisor.scan_once() == 0
    assert intake.quarantined() == []
    assert sorted(p.name for p in intake.folder.iterdir()) == [
        ".being-assembled",
        "empty",
        "loose.tif",
    ]


async def test_run_recovers_then_takes_deliveries(intake: Intake, stores: Stores):
    deliver(intake.work_area, "r1", meta("r1"))
    deliver(intake.folder, "r2", meta("r2"))
    deliver(intake.folder, "r3", "{")
    with anyio.move_on_after(0.5):  # about ten scans at poll_s = 0.05
        await intake.supervisor.run()
    assert sorted(t.id for t in intake.new) == ["r1", "r2"]
    assert "r3.json is not valid JSON" in intake.reason()
