"""An operator resets ARS flags the sync gave up on (`dasscod ars-retry`), through the daemon's
listener, against the ARS simulator: assets whose create, upload or ERDA sync ARS refused for
good are listed (`dasscod ls --ars-error`, `dasscod errors`), reset once ARS behaves, and then
go into ARS and ERDA and on to their load job; what is not in ERROR is refused."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
from click.testing import CliRunner, Result

from dasscod.cli import main
from dasscod.devstack.ars import ArsSimulator
from dasscod.devstack.assets import add_asset, make_track
from dasscod.devstack.stack import LocalStack
from dasscod.model import FileEntry, Flag, Track
from dasscod.services.ars_retry import plan_reset
from dasscod.settings import Settings
from dasscod.wiring import build_daemon
from tests.ars.conftest import eventually
from tests.ars.test_sync import DONE, wait_flags

TOKEN = "carol-ars-retry-token-0123456789"


def daemon_settings(sim: ArsSimulator, tmp_path: Path, mongo_uri: str) -> Settings:
    stack = LocalStack(tmp_path / "stack", mongo_uri, database=f"ars_retry_{uuid.uuid4().hex[:8]}",
                       control_tokens={"carol": TOKEN})
    data = stack.settings_data()
    data["timing"]["shutdown_s"] = 3.0
    data["ars"] = sim.settings().model_dump()
    # A sweep far longer than the test's waits: the reset itself must wake the sync.
    data["ars_sync"] = {"sweep_s": 120.0, "max_erda_failures": 2, "confirm_poll_s": 0.1}
    data["clusters"]["local"]["env"]["DASSCO_CALLBACK_DEADLINE_S"] = "5"
    return Settings.model_validate(data)


async def dasscod(settings: Settings, *args: str) -> Result:
    """A `dasscod` command, run in a thread: it blocks on the daemon this loop serves."""
    env = {"DASSCOD_CONTROL_TOKEN": TOKEN, "DASSCOD_CONFIG": "", "DASSCOD_CONTROL_URL": ""}
    url = f"http://127.0.0.1:{settings.listener.port}"
    return await anyio.to_thread.run_sync(
        lambda: CliRunner().invoke(main, [*args, "--url", url], env=env))


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def refused(result: Result) -> str:
    assert result.exit_code == 1, result.output
    return result.output


async def test_ars_flags_in_error_are_listed_reset_and_then_synced(
    sim: ArsSimulator, tmp_path: Path, mongo_uri: str
) -> None:
    settings = daemon_settings(sim, tmp_path, mongo_uri)
    daemon = build_daemon(settings)
    files = tmp_path / "files"
    erda, upload, create = (f"arsretry-{kind}-{uuid.uuid4().hex[:6]}"
                            for kind in ("erda", "upload", "create"))
    sim.state.erda.fail_guids.add(erda)  # every ERDA sync of it fails
    sim.state.forbidden_guids.add(upload)  # its files may not be uploaded
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            await daemon.ready.wait()
        stores = daemon.stores
        await add_asset(stores, files, erda)
        await add_asset(stores, files, upload)
        await add_asset(stores, files, create, metadata={"digitiser": ""})  # ARS wants one
        await wait_flags(stores, [erda], {"erda_sync": Flag.ERROR})
        await wait_flags(stores, [upload], {"has_new_file": Flag.ERROR})
        await wait_flags(stores, [create], {"is_in_ars": Flag.ERROR})

        # What operators see: the assets the sync gave up, and the flag each one is stuck at.
        listed = json.loads(ok(await dasscod(settings, "ls", "--ars-error", "--json")))
        assert {a["guid"]: a["ars_errors"] for a in listed["assets"]} == {
            erda: ["erda_sync"], upload: ["has_new_file"], create: ["is_in_ars"]}
        assert "erda_sync" in ok(await dasscod(settings, "ls", "--ars-error"))
        groups = json.loads(ok(await dasscod(settings, "errors", "--json")))
        assert {g["job"] for g in groups} >= {"ars erda_sync", "ars has_new_file",
                                              "ars is_in_ars"}
        assert f"dasscod ars-retry {erda}" in ok(await dasscod(settings, "show", erda))

        # Refusals change nothing.
        assert "is YES, not ERROR" in refused(
            await dasscod(settings, "ars-retry", erda, "is_in_ars"))
        assert "no asset" in refused(await dasscod(settings, "ars-retry", "no-such-asset"))
        assert (await dasscod(settings, "ars-retry", erda, "bogus")).exit_code == 2
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.listener.port}",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            answer = await http.post(f"/api/v1/control/assets/{erda}/ars-retry",
                                     json={"flag": "jobs_status"})
            assert answer.status_code == 422 and "not an ARS flag" in answer.json()["detail"]
            assert (await http.post(f"/api/v1/control/assets/{erda}/ars-retry", json={},
                                    headers={"Authorization": "Bearer wrong"})).status_code == 401
        assert (await stores.track.get(erda)).erda_sync is Flag.ERROR  # type: ignore[union-attr]

        # ARS behaves again (and the metadata is fixed); the operator resets the flags.
        sim.state.erda.fail_guids.clear()
        sim.state.forbidden_guids.clear()
        await stores.metadata.merge(create, {"digitiser": "Fixed Digitiser"}, updated_by="test")
        assert "erda_sync (ERROR -> NO)" in ok(await dasscod(settings, "ars-retry", erda,
                                                       "--reason", "ERDA fixed"))
        ok(await dasscod(settings, "ars-retry", upload, "has_new_file"))
        ok(await dasscod(settings, "ars-retry", create))
        # Each goes through ARS and ERDA within seconds: the sweep (120 s) played no part.
        tracks = await wait_flags(stores, [erda, upload, create], DONE, timeout_s=20)
        assert all(t.ars_error is None for t in tracks)

        async def load_taken() -> list[Track] | None:
            found = await stores.track.find([erda, upload, create])
            taken = all(any(h.job == "load" for h in t.history) for t in found)
            return found if taken else None

        await eventually(load_taken, timeout_s=20)  # the pipeline goes on after ARS

        # Idempotent: a second reset finds nothing in ERROR and changes nothing.
        again = refused(await dasscod(settings, "ars-retry", erda))
        assert "no ARS flag" in again and "nothing to reset" in again
        [erda_track] = await stores.track.find([erda])
        reset = [h for h in erda_track.history if h.field == "erda_sync" and h.from_ == "ERROR"]
        assert [(h.to, h.by, h.reason) for h in reset] == [("NO", "carol", "ERDA fixed")]
        resets = [h for h in erda_track.history if h.cause.startswith("control: ARS retry")]
        assert len(resets) == 1, "the refused second reset wrote nothing"
        [create_track] = await stores.track.find([create])
        assert any("not in ARS" in h.cause for h in create_track.history), (
            "the reset create is resolved by asking ARS first")
        audit = await stores.audit.latest(10, by="carol")
        assert sorted((r.action, r.target) for r in audit) == sorted(
            ("ars retry", f"asset:{g}") for g in (erda, upload, create))
        daemon.stop()


def _track(**fields: Any) -> Track:
    return make_track("arsretry-plan").model_copy(update=fields)


def test_a_share_reset_for_files_not_yet_in_erda_marks_them_new() -> None:
    """An asset created without a share (has_open_share ERROR) was never marked as having new
    files; the reset does, or the reopen step would never look at it."""
    files = [FileEntry(name="a.tif", type="tif", file_size=1.0, check_sum=1)]
    track = _track(is_in_ars=Flag.YES, has_open_share=Flag.ERROR, has_new_file=Flag.NO,
                   file_list=files, ars_error="asset created without a share: full")
    reset = plan_reset(track, ["has_open_share"])
    assert reset.fields["has_open_share"] is Flag.NO
    assert reset.fields["has_new_file"] is Flag.YES
    assert reset.expect == {"has_open_share": Flag.ERROR, "has_new_file": Flag.NO}
    assert reset.fields["ars_error"] is None
    # Another flag still in ERROR keeps ARS's message.
    both = track.model_copy(update={"update_metadata": Flag.ERROR})
    assert "ars_error" not in plan_reset(both, ["has_open_share"]).fields
