"""Retention against the real store and real folders: which settled assets lose their files,
when, and what exactly is removed."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from dasscod.cluster.configured import Cluster, build_clusters
from dasscod.model import Flag, JobStatus, utcnow
from dasscod.pipeline import Event, JobEvent
from dasscod.services.launch import scheduler_job_name
from dasscod.settings import ClusterSettings
from dasscod.store import Stores
from dasscod.supervisors.retention import Retention
from tests.conftest import make_track

DAYS = 30


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    settings = ClusterSettings(work_root=tmp_path / "cluster" / "work",
                               state_dir=tmp_path / "cluster" / "jobs")
    return build_clusters({"local": settings})["local"]


def retention(stores: Stores, cluster: Cluster, tmp_path: Path, *, ars: bool = True) -> Retention:
    return Retention(stores=stores, clusters={"local": cluster}, work_area=tmp_path / "assets",
                     retention_days=DAYS, archived_by_ars=ars, interval_s=1,
                     stopping=anyio.Event())


async def asset(stores: Stores, cluster: Cluster, tmp_path: Path, guid: str, *,
                fail: bool) -> dict[str, Path]:
    """An asset whose load job ran twice on the cluster (a retry), then ended DONE (every job)
    or in ERROR; with its work-area folder and the cluster's files of both attempts."""
    files = tmp_path / "assets" / guid
    files.mkdir(parents=True)
    (files / f"{guid}.tif").write_bytes(b"x" * 1000)
    track = make_track(guid)
    track.temporary_files_local = Flag.YES
    track.temporary_path_local = str(files)
    await stores.track.insert(track)
    paths = {"work area": files, "cluster work": Path(str(cluster.workdir(guid)))}
    paths["cluster work"].mkdir(parents=True)
    (paths["cluster work"] / "image.tif").write_bytes(b"y")
    state = Path(str(cluster.state_dir()))
    await anyio.Path(state).mkdir(parents=True, exist_ok=True)
    for attempt in (1, 2):
        await stores.track.apply(guid, [JobEvent("load", Event.CLAIM, cluster="local")],
                                 cause="test")
        name = scheduler_job_name(guid, "load", attempt)
        (state / name).mkdir()  # the direct scheduler's job folder
        (state / f"{name}.sh").write_text("script")  # a batch system's script
        paths[f"attempt {attempt}"] = state / name
        paths[f"script {attempt}"] = state / f"{name}.sh"
        outcome = Event.FAILED if attempt == 1 or fail else Event.FINISHED
        await stores.track.apply(guid, [JobEvent("load", outcome, attempt=attempt,
                                                 retryable=attempt == 1, error="boom")],
                                 cause="test")
        if attempt == 1:
            await stores.track.apply(guid, [JobEvent("load", Event.RETRY_DUE)], cause="test")
    if not fail:
        current = await stores.track.get(guid)
        assert current is not None
        for job in current.job_list[1:]:
            await stores.track.apply(guid, [JobEvent(job.name, Event.CLAIM, cluster="local")],
                                     cause="test")
            await stores.track.apply(guid, [JobEvent(job.name, Event.FINISHED, attempt=1)],
                                     cause="test")
    return paths


async def test_a_done_asset_loses_its_files_once_erda_has_them(
    stores: Stores, cluster: Cluster, tmp_path: Path
) -> None:
    paths = await asset(stores, cluster, tmp_path, "r-done", fail=False)
    keeper = retention(stores, cluster, tmp_path)
    track = await stores.track.get("r-done")
    assert track is not None and track.jobs_status is JobStatus.DONE

    assert await keeper.run_once() == 0  # not in ERDA yet
    assert all(p.exists() for p in paths.values())
    assert not await retention(stores, cluster, tmp_path, ars=False).run_once()

    await stores.track.set_fields("r-done", {"erda_sync": Flag.YES}, cause="test: in ERDA")
    assert await keeper.run_once() == 1
    assert [name for name, p in paths.items() if p.exists()] == []
    track = await stores.track.get("r-done")
    assert track is not None
    assert (track.temporary_files_local, track.temporary_path_local) == (Flag.NO, "")
    assert "retention: files removed (done and archived in ERDA)" in track.history[-1].cause
    assert await keeper.run_once() == 0  # nothing left to do: it left the queue


async def test_an_asset_in_error_keeps_its_files_for_retention_days(
    stores: Stores, cluster: Cluster, tmp_path: Path
) -> None:
    paths = await asset(stores, cluster, tmp_path, "r-err", fail=True)
    keeper = retention(stores, cluster, tmp_path)
    track = await stores.track.get("r-err")
    assert track is not None and track.jobs_status is JobStatus.ERROR

    assert await keeper.run_once(utcnow() + timedelta(days=DAYS - 1)) == 0
    assert all(p.exists() for p in paths.values())
    assert await keeper.run_once(utcnow() + timedelta(days=DAYS, hours=1)) == 1
    assert [name for name, p in paths.items() if p.exists()] == []


async def test_nothing_outside_the_work_area_is_removed(
    stores: Stores, cluster: Cluster, tmp_path: Path
) -> None:
    await asset(stores, cluster, tmp_path, "r-out", fail=False)
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    await stores.track.set_fields(
        "r-out", {"erda_sync": Flag.YES, "temporary_path_local": str(elsewhere)}, cause="test")
    assert await retention(stores, cluster, tmp_path).run_once() == 1
    assert elsewhere.is_dir()
