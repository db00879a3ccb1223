"""The daemon with `[ars]` configured: the sync supervisor runs beside the others, is woken by
their writes, and the load job waits until the asset's files are in ARS."""

from __future__ import annotations

import time
from pathlib import Path

import anyio

from dasscod.daemon import Daemon
from dasscod.devstack.ars import ArsSimulator
from dasscod.model import Flag, Track
from dasscod.settings import Settings
from tests.ars.conftest import eventually
from tests.ars.test_sync import DONE, add_asset, wait_flags
from tests.integration.test_daemon import settings_for


async def test_the_daemon_syncs_to_ars_before_the_load_job_becomes_ready(
    sim: ArsSimulator, tmp_path: Path, mongo_uri: str
) -> None:
    base = settings_for(tmp_path, mongo_uri)
    settings = Settings.model_validate({**base.model_dump(), "ars": sim.settings(),
                                        "security": base.security})
    daemon = Daemon(settings)
    assert daemon.pipelines["PIPEHERB0001"].spec("load").requires["is_in_ars"] is Flag.YES
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            await daemon.ready.wait()
        track = await add_asset(daemon.stores, tmp_path / "files", "daemon-ars-1")
        assert track.ready == []  # not before the files are in ARS
        [track] = await wait_flags(daemon.stores, [track.id], DONE)

        async def load_taken() -> Track | None:
            t = await daemon.stores.track.get(track.id)
            return t if t and any(h.job == "load" for h in t.history) else None

        track = await eventually(load_taken)  # woken by the flag change, not a sweep
        started = time.monotonic()
        daemon.stop()
    assert time.monotonic() - started < settings.timing.shutdown_s - 1
    in_erda = next(i for i, h in enumerate(track.history) if "in ERDA" in h.cause)
    first_job = next(i for i, h in enumerate(track.history) if h.job == "load")
    assert first_job > in_erda
