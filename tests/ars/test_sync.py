"""The ARS sync supervisor against the simulator (real HTTP) and a real store: the flag
lifecycle, crash recovery, outages, refusals and metadata coalescing."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from dasscod.ars import ArsClient
from dasscod.ars.health import BreakerState
from dasscod.ars.mapping import to_ars_asset, to_minimal_asset
from dasscod.delivery import file_entry
from dasscod.devstack.ars import ArsSimulator
from dasscod.devstack.assets import add_asset, running_sync
from dasscod.model import Flag, Track
from dasscod.store import Stores
from dasscod.supervisors.ars_sync import ArsSync, SyncOptions
from tests.ars.conftest import eventually
from tests.conftest import make_track

FAST = SyncOptions(
    sweep_s=2.0,
    confirm_poll_s=0.02,
    unavailable_backoff_s=0.1,
    breaker_threshold=2,
    breaker_cooldown_s=0.1,
    breaker_max_cooldown_s=0.4,
)
FLAGS = ("is_in_ars", "has_new_file", "has_open_share", "erda_sync", "update_metadata")


def guid(prefix: str = "sync") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def running(
    sim: ArsSimulator, stores: Stores, options: SyncOptions = FAST
) -> contextlib.AbstractAsyncContextManager[ArsSync]:
    """The sync supervisor running in the background, woken by the store's writes."""
    return running_sync(sim.settings(), stores, options)


async def wait_flags(
    stores: Stores, guids: list[str], wanted: Mapping[str, Flag], timeout_s: float = 10.0
) -> list[Track]:
    async def probe() -> list[Track] | None:
        tracks = await stores.track.find(guids)
        ok = len(tracks) == len(guids) and all(
            getattr(t, k) == v for t in tracks for k, v in wanted.items()
        )
        return tracks if ok else None

    try:
        return await eventually(probe, timeout_s=timeout_s, interval_s=0.02)
    except AssertionError:
        tracks = await stores.track.find(guids)
        states = {t.id: [*(str(getattr(t, f)) for f in FLAGS), t.ars_error] for t in tracks}
        raise AssertionError(f"flags not reached: {states}") from None


DONE = {
    "is_in_ars": Flag.YES,
    "erda_sync": Flag.YES,
    "has_new_file": Flag.NO,
    "has_open_share": Flag.NO,
}


async def assert_ars_metadata_is_local(sim: ArsSimulator, stores: Stores, asset_guid: str) -> None:
    md = await stores.metadata.get(asset_guid)
    assert md is not None
    expected = to_ars_asset(md, update_user="dasscod").to_wire()
    remote = sim.state.assets[asset_guid]
    assert {k: remote.get(k) for k in expected} == expected


def creates(sim: ArsSimulator, ok_only: bool = True) -> int:
    return sum(
        1
        for r in sim.requests
        if r.method == "POST"
        and r.path.endswith("/v1/assetmetadata")
        and (r.outcome == "ok" or not ok_only)
    )


def no_error_history(track: Track) -> bool:
    return all(h.to != Flag.ERROR for h in track.history)


async def test_an_asset_and_its_derivative_go_all_the_way_to_erda(
    sim: ArsSimulator, stores: Stores, tmp_path: Path
) -> None:
    parent, child = guid("parent"), guid("child")
    await add_asset(stores, tmp_path, parent, files={"a.tif": b"A" * 1000, "b.tif": b"B" * 10})
    await add_asset(stores, tmp_path, child, parent=parent, files={"c.jpg": b"C" * 50})
    async with running(sim, stores):
        tracks = await wait_flags(stores, [parent, child], DONE)
        assert creates(sim) == 2  # one create (with its one share) per asset
        assert sim.count("/createShare") == 0
        assert sorted(sim.state.files[parent]) == ["a.tif", "b.tif"]
        assert all(f.synced for f in sim.state.files[parent].values())
        assert sim.state.files[child]["c.jpg"].data == b"C" * 50
        assert sim.state.assets[child]["parent_guid"] == parent
        for track in tracks:
            assert all(f.erda_sync is Flag.YES and f.ars_link for f in track.file_list)
            assert no_error_history(track)

        # A job changes the metadata: exactly one push, and ARS then equals the local copy.
        await stores.metadata.merge(parent, {"barcode": ["B-1"], "funding": "Carlsberg"},
                                    updated_by="test")
        await stores.track.set_fields(parent, {"update_metadata": Flag.YES}, cause="test")
        await wait_flags(stores, [parent], {"update_metadata": Flag.NO})
        assert sim.count(f"/v1/assetmetadata/{parent}", "PUT") == 1
        await assert_ars_metadata_is_local(sim, stores, parent)
        assert sim.state.assets[parent]["specimens"][0]["barcode"] == "B-1"


async def test_an_await_left_by_a_crash_is_resolved_by_asking_ars(
    sim: ArsSimulator, stores: Stores, tmp_path: Path
) -> None:
    created, lost = guid("created"), guid("lost")
    # Killed after ARS created the asset, before the flag was written: ARS has it, we say AWAIT.
    await add_asset(stores, tmp_path, created, is_in_ars=Flag.AWAIT)
    md = await stores.metadata.get(created)
    assert md is not None
    async with ArsClient(sim.settings()) as client:
        await client.create_asset(to_ars_asset(md, update_user="dasscod"), allocation_mb=2)
    # Killed after the claim, before the call: AWAIT, and ARS never heard of it.
    await add_asset(stores, tmp_path, lost, is_in_ars=Flag.AWAIT)

    async with running(sim, stores):
        tracks = await wait_flags(stores, [created, lost], DONE)
    assert creates(sim) == 2  # the direct one and the lost one's: no duplicate
    by_id = {t.id: t for t in tracks}
    causes = [h.cause for h in by_id[created].history]
    assert any("found in ARS" in c for c in causes)
    assert any("not in ARS" in h.cause for h in by_id[lost].history)
    assert all(f.synced for f in sim.state.files[created].values())


async def test_an_outage_opens_the_breaker_and_nothing_is_lost(
    sim: ArsSimulator, stores: Stores, tmp_path: Path
) -> None:
    guids = [guid("outage") for _ in range(3)]
    for g in guids:
        await add_asset(stores, tmp_path, g)
    sim.faults.down_for(1.0)
    with structlog.testing.capture_logs() as logs:
        async with running(sim, stores) as sync:
            tracks = await wait_flags(stores, guids, DONE, timeout_s=15)
            states = [s for s, _ in sync.breaker.transitions]
    assert BreakerState.OPEN in states and states[-1] is BreakerState.CLOSED
    assert states.count(BreakerState.HALF_OPEN) >= 2  # probed more than once while down ...
    ars_lines = [(e["log_level"], e["event"]) for e in logs
                 if e["event"].startswith("ars ") and e["log_level"] != "debug"]
    assert ars_lines == [  # ... and told the operators twice: when it went, when it came back
        ("warning", "ars unavailable: circuit breaker open"),
        ("info", "ars available again: circuit breaker closed"),
    ]
    assert all(no_error_history(t) for t in tracks)
    assert creates(sim) == 3  # each delivered once
    assert any(r.outcome == "error" for r in sim.requests)  # ARS really was down


async def test_random_server_errors_still_deliver_everything(
    sim: ArsSimulator, stores: Stores, tmp_path: Path
) -> None:
    guids = [guid("flaky") for _ in range(5)]
    for g in guids:
        await add_asset(stores, tmp_path, g)
    sim.faults.update({"error_rate": 0.3, "seed": 7})
    async with running(sim, stores):
        tracks = await wait_flags(stores, guids, DONE, timeout_s=15)
    assert all(no_error_history(t) for t in tracks)
    assert creates(sim) == 5
    assert sim.count(method="POST") > 0


async def test_refused_assets_show_an_error_and_the_others_finish(
    sim: ArsSimulator, stores: Stores, tmp_path: Path
) -> None:
    good, no_digitiser, forbidden = guid("good"), guid("nodig"), guid("forbidden")
    await add_asset(stores, tmp_path, good)
    await add_asset(stores, tmp_path, no_digitiser, metadata={"digitiser": ""})
    await add_asset(stores, tmp_path, forbidden)
    sim.state.forbidden_guids.add(forbidden)
    async with running(sim, stores):
        await wait_flags(stores, [good], DONE)
        [bad] = await wait_flags(stores, [no_digitiser], {"is_in_ars": Flag.ERROR})
        [denied] = await wait_flags(stores, [forbidden], {"has_new_file": Flag.ERROR})
    assert bad.ars_error and "digitiser" in bad.ars_error
    assert denied.ars_error and "access" in denied.ars_error


async def test_changes_during_a_push_cause_exactly_one_more_push(
    sim: ArsSimulator, stores: Stores, tmp_path: Path
) -> None:
    g = guid("meta")
    await add_asset(stores, tmp_path, g)
    path = f"/v1/assetmetadata/{g}"
    async with running(sim, stores):
        await wait_flags(stores, [g], DONE)
        sim.faults.latency_s = 0.3  # every call now takes a while: the push is in flight
        await stores.metadata.merge(g, {"funding": "first"}, updated_by="test")
        await stores.track.set_fields(g, {"update_metadata": Flag.YES}, cause="change 1")

        async def push_in_flight() -> bool | None:
            return True if sim.count(path, "PUT") == 1 else None

        await eventually(push_in_flight)
        for n in (2, 3):
            await stores.metadata.merge(g, {"funding": f"change {n}"}, updated_by="test")
            await stores.track.set_fields(g, {"update_metadata": Flag.YES}, cause=f"change {n}")
        [track] = await wait_flags(stores, [g], {"update_metadata": Flag.NO})
        sim.faults.latency_s = 0.0
    assert track.metadata_seq == 3
    assert sim.count(path, "PUT") == 2
    assert sim.state.assets[g]["funding"] == "change 3"
    await assert_ars_metadata_is_local(sim, stores, g)


@pytest.mark.parametrize("failures", [1, 3])
async def test_erda_errors_are_retried_then_shown(
    sim: ArsSimulator, stores: Stores, tmp_path: Path, failures: int
) -> None:
    g = guid("erda")
    await add_asset(stores, tmp_path, g)
    sim.state.erda.fail_next = failures
    async with running(sim, stores):
        if failures < FAST.max_erda_failures:
            [track] = await wait_flags(stores, [g], DONE)
            assert track.erda_failures == 0
        else:
            [track] = await wait_flags(stores, [g], {"erda_sync": Flag.ERROR})
            assert track.ars_error and "ERDA" in track.ars_error
    assert sim.count(f"/{g}/synchronize") == failures + (failures < FAST.max_erda_failures)


async def test_a_file_reported_while_the_asset_is_created_is_not_forgotten(
    sim: ArsSimulator, stores: Stores, tmp_path: Path
) -> None:
    asset = guid("race")
    track = await add_asset(stores, tmp_path, asset, files={})
    sim.faults.latency_s = 0.5  # the create's answer comes late: the call is in flight
    async with running(sim, stores):

        async def create_in_flight() -> bool | None:
            return True if sim.count("/v1/assetmetadata", "POST") == 1 else None

        await eventually(create_in_flight)
        # A file is reported while the create call is in flight; the sync writes the
        # create's outcome from the copy it read before the call.
        sim.faults.latency_s = 0.0
        await report_late_file(stores, track)
        [done] = await wait_flags(stores, [asset], DONE)
    assert "late.jpg" in sim.state.files[asset], "the late file must still be uploaded"
    assert no_error_history(done)


def with_options(**changes: Any) -> SyncOptions:
    return FAST.model_copy(update=changes)


async def report_late_file(stores: Stores, track: Track) -> None:
    """A job reports one more file, late.jpg, for an asset already in ARS."""
    late = Path(track.temporary_path_local) / "late.jpg"
    late.write_bytes(b"L" * 40)
    assert await stores.track.add_file(track.id, file_entry(late), cause="test")


async def test_a_sync_whose_status_lags_is_completed_in_ars_after_checking_erda(
    sim: ArsSimulator, stores: Stores, tmp_path: Path
) -> None:
    g = guid("lag")
    await add_asset(stores, tmp_path, g, files={"a.tif": b"A" * 100, "b.tif": b"B" * 10})
    sim.state.erda.lag_guids.add(g)  # the files reach ERDA, the status stays ASSET_RECEIVED
    async with running(sim, stores, with_options(erda_timeout_s=0.3)):
        [track] = await wait_flags(stores, [g], DONE)
    assert sim.count(f"/{g}/complete", "POST") == 1
    assert sim.state.assets[g]["internal_status"] == "COMPLETED"
    assert sim.count(f"/{g}/synchronize") == 2  # requested once more after the first wait
    assert [h.cause for h in track.history if "completed in ARS" in h.cause]
    assert track.ars_error is None and track.erda_timeouts == 0


async def test_a_stalled_sync_with_files_missing_in_erda_is_an_error_naming_them(
    sim: ArsSimulator, stores: Stores, tmp_path: Path
) -> None:
    stalled, fine = guid("stall"), guid("fine")
    await add_asset(stores, tmp_path, stalled, files={"missing.tif": b"M" * 100})
    await add_asset(stores, tmp_path, fine)
    sim.state.erda.stall_guids.add(stalled)
    async with running(sim, stores, with_options(erda_timeout_s=0.3)):
        await wait_flags(stores, [fine], DONE)
        [track] = await wait_flags(stores, [stalled], {"erda_sync": Flag.ERROR})
    assert track.ars_error and "missing.tif" in track.ars_error
    assert "ASSET_RECEIVED" in track.ars_error
    assert sim.count(f"/{stalled}/complete") == 0  # never completed what ERDA does not hold
    assert sim.state.assets[stalled]["internal_status"] == "ASSET_RECEIVED"


async def test_a_file_reported_after_the_sync_reopens_the_share_once(
    sim: ArsSimulator, stores: Stores, tmp_path: Path
) -> None:
    g = guid("later")
    track = await add_asset(stores, tmp_path, g, files={"a.tif": b"A" * 100})
    async with running(sim, stores):
        await wait_flags(stores, [g], DONE)
        await report_late_file(stores, track)
        [done] = await wait_flags(stores, [g], {**DONE, "has_new_file": Flag.NO})
    assert sim.count(f"/{g}/createShare", "POST") == 1
    assert creates(sim) == 1
    assert sorted(sim.state.files[g]) == ["a.tif", "late.jpg"]
    assert all(f.synced for f in sim.state.files[g].values())
    assert all(f.erda_sync is Flag.YES for f in done.file_list)
    assert no_error_history(done)


async def test_a_file_reported_during_the_sync_is_uploaded_after_it(
    sim: ArsSimulator, stores: Stores, tmp_path: Path
) -> None:
    g = guid("during")
    track = await add_asset(stores, tmp_path, g, files={"a.tif": b"A" * 100})
    sim.state.erda.delay_s = 0.5
    async with running(sim, stores):
        await wait_flags(stores, [g], {"erda_sync": Flag.AWAIT})
        await report_late_file(stores, track)
        [done] = await wait_flags(stores, [g], {**DONE, "has_new_file": Flag.NO})
    assert all(f.synced for f in sim.state.files[g].values())
    assert sorted(sim.state.files[g]) == ["a.tif", "late.jpg"]
    assert [f.erda_sync for f in done.file_list] == [Flag.YES, Flag.YES]


async def test_no_more_erda_syncs_await_at_once_than_the_limit(
    sim: ArsSimulator, stores: Stores, tmp_path: Path
) -> None:
    guids = [guid("queue") for _ in range(5)]
    for g in guids:
        await add_asset(stores, tmp_path, g)
    sim.state.erda.delay_s = 0.2
    async with running(sim, stores, with_options(max_awaiting_erda=2)):
        await wait_flags(stores, guids, DONE, timeout_s=15)
    assert sim.state.peak_syncing == 2


async def test_shares_stay_under_the_size_caps(
    sim: ArsSimulator, stores: Stores, tmp_path: Path
) -> None:
    # Each asset asks for 2 MB (its 1 MB, rounded up, plus 1 MB headroom).
    guids = [guid("cap") for _ in range(5)]
    for g in guids:
        await add_asset(stores, tmp_path, g, files={"a.tif": b"x" * 500_000})
    sim.state.erda.delay_s = 0.1
    options = with_options(max_open_mb=100, max_open_original_mb=4)
    async with running(sim, stores, options):
        await wait_flags(stores, guids, DONE, timeout_s=15)
    assert sim.state.peak_allocated_mb == 4
    assert creates(sim) == 5


async def test_a_reopen_whose_answer_was_lost_does_not_open_a_second_share(
    sim: ArsSimulator, stores: Stores, tmp_path: Path
) -> None:
    g = guid("lost-reopen")
    track = await add_asset(stores, tmp_path, g, files={"a.tif": b"A" * 100})
    async with running(sim, stores):
        await wait_flags(stores, [g], DONE)
    # A later file, and a reopen that reached ARS before the daemon died (AWAIT, share open).
    await report_late_file(stores, track)
    await stores.track.set_fields(g, {"has_open_share": Flag.AWAIT}, cause="test: crashed")
    md = await stores.metadata.get(g)
    assert md is not None
    async with ArsClient(sim.settings()) as client:
        minimal = to_minimal_asset(md, asset_guid=g, parent_guid=track.parent_guid)
        await client.create_share(minimal, allocation_mb=2)
    async with running(sim, stores):
        [done] = await wait_flags(stores, [g], {**DONE, "has_new_file": Flag.NO})
    assert sim.state.files[g]["late.jpg"].synced
    # Ours and the daemon's, which ARS refused (409) as the share was open: the daemon took
    # that as "open" and uploaded into it.
    assert sim.count(f"/{g}/createShare", "POST") == 2
    assert no_error_history(done)


async def test_answers_lost_after_ars_acted_neither_duplicate_nor_lose_anything(
    sim: ArsSimulator, stores: Stores, tmp_path: Path
) -> None:
    parent, child = guid("lose-parent"), guid("lose-child")
    others = [guid("lose") for _ in range(4)]
    await add_asset(stores, tmp_path, parent)
    await add_asset(stores, tmp_path, child, parent=parent, files={"c.jpg": b"C" * 50})
    for g in others:
        await add_asset(stores, tmp_path, g)
    everything = [parent, child, *others]
    # A quarter of ARS's answers are lost after it did the work: each retry meets its own
    # first attempt (a create "already exists", a share already open, a sync under way).
    sim.faults.update({"lose_rate": 0.25, "seed": 3})
    async with running(sim, stores):
        await wait_flags(stores, everything, DONE, timeout_s=20)
        for g in everything:
            await stores.metadata.merge(g, {"funding": f"grant for {g}"}, updated_by="test")
            await stores.track.set_fields(g, {"update_metadata": Flag.YES}, cause="test")
        tracks = await wait_flags(stores, everything, {"update_metadata": Flag.NO}, timeout_s=20)
    assert sum(r.outcome == "lose" for r in sim.requests) >= 5  # the fault really happened
    assert sorted(sim.state.assets) == sorted(everything)
    assert all(f.synced for g in everything for f in sim.state.files[g].values())
    assert sim.count("/createShare") == 0  # every share came with its create, once
    assert all(no_error_history(t) for t in tracks)
    for g in everything:
        await assert_ars_metadata_is_local(sim, stores, g)


async def test_a_slow_ars_is_waited_for_not_treated_as_down(
    sim: ArsSimulator, stores: Stores, tmp_path: Path
) -> None:
    guids = [guid("slow") for _ in range(4)]
    for g in guids:
        await add_asset(stores, tmp_path, g)
    sim.faults.latency_s = 0.2  # every call takes a while, none fails
    async with running(sim, stores) as sync:
        tracks = await wait_flags(stores, guids, DONE, timeout_s=20)
        transitions = list(sync.breaker.transitions)
    assert transitions == []  # the breaker never opened
    assert all(no_error_history(t) for t in tracks)
    assert creates(sim) == 4


async def test_confirm_asks_soon_after_a_sync_and_less_often_as_it_ages(
    sim: ArsSimulator, stores: Stores
) -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    young, old, new = (
        make_track(g).model_copy(update={"erda_sync": Flag.AWAIT, "erda_sync_since": since})
        for g in ("young", "old", "new")
    )
    async with ArsClient(sim.settings()) as client:
        sync = ArsSync(stores, client, stopping=anyio.Event(),
                       options=with_options(confirm_poll_s=2.0))
        schedule = sync.confirm_schedule
        schedule.asked("young", since + timedelta(seconds=0.2))
        schedule.asked("old", since + timedelta(seconds=60))
        schedule.asked("gone", since)
        now = since + timedelta(seconds=61)
        polls = schedule.next_polls([young, old, new], now)
    assert polls["young"] == since + timedelta(seconds=0.3)  # half its age later
    assert polls["old"] == since + timedelta(seconds=62)  # at most confirm_poll_s apart
    assert polls["new"] == now  # never asked: at once
    assert "gone" not in schedule  # no longer awaiting: forgotten
