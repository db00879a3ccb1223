"""Pure parts of the ARS sync: the breaker, the metadata mapping, the wake-up predicate, the
metadata sequence in `plan`, and the load job's ARS requirement."""

from __future__ import annotations

from datetime import UTC, datetime

from dasscod.ars.health import BreakerState, CircuitBreaker
from dasscod.ars.mapping import to_ars_asset
from dasscod.ars.throttle import ShareBudget
from dasscod.model import Flag
from dasscod.pipeline import plan
from dasscod.pipelines import load_pipelines
from dasscod.supervisors.ars_sync import require_files_in_ars, wanted_steps
from tests.conftest import make_metadata, make_track


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state(b: CircuitBreaker) -> BreakerState:
    return b.state  # read through a call: mypy would narrow the attribute across calls


def test_breaker_opens_after_the_threshold_and_doubles_its_cooldown() -> None:
    clock = Clock()
    closed: list[bool] = []
    b = CircuitBreaker(threshold=2, cooldown_s=1, max_cooldown_s=3, clock=clock,
                       on_close=lambda: closed.append(True))
    assert b.allow()
    b.failure()
    assert state(b) is BreakerState.CLOSED
    b.failure()
    assert state(b) is BreakerState.OPEN and not b.allow()
    clock.now = 1.0
    assert b.allow()  # the probe
    assert state(b) is BreakerState.HALF_OPEN and not b.allow()  # only one probe
    b.failure()
    assert state(b) is BreakerState.OPEN and b.cooldown_s == 2
    clock.now = 3.0
    assert b.allow()
    b.failure()
    assert b.cooldown_s == 3  # capped
    clock.now = 6.0
    assert b.allow()
    b.success()
    assert state(b) is BreakerState.CLOSED and b.cooldown_s == 1 and closed == [True]
    assert [s for s, _ in b.transitions].count(BreakerState.OPEN) == 3


def test_a_refusal_is_an_answer_and_resets_the_count() -> None:
    b = CircuitBreaker(threshold=2)
    b.failure()
    b.success()
    b.failure()
    assert state(b) is BreakerState.CLOSED


def test_mapping_builds_a_full_asset_body_from_the_metadata_document() -> None:
    md = make_metadata(
        "g-1", barcode=["B1", "B2"], asset_subject="specimen", tags={"a": "x", "n": [1]},
        payload_type=["image"], multispecimen=True, specimen_pid=["p1"],
    ).model_dump()
    asset = to_ars_asset(md, update_user="dasscod")
    assert asset.missing_for_update() == []
    wire = asset.to_wire()
    assert wire["asset_pid"] == "g-1" and wire["status"] == "WORKING_COPY"
    assert wire["pipeline"] == "PIPEHERB0001" and wire["workstation"] == "WORKHERB0001"
    assert wire["updateUser"] == "dasscod" and wire["file_formats"] == ["TIF"]
    assert [s["barcode"] for s in wire["specimens"]] == ["B1", "B2"]
    assert wire["specimens"][0]["specimen_pid"] == "p1"
    assert wire["tags"] == {"a": "x", "n": "[1]"} and wire["payload_type"] == "image"
    assert wire["multi_specimen"] is True and wire["subject"] == "specimen"


def test_every_request_for_a_metadata_push_increments_the_sequence() -> None:
    track = make_track("g-2")
    now = datetime.now(UTC)
    first = plan(track, [], pipeline=None, now=now, cause="t",
                 asset_fields={"update_metadata": Flag.YES})
    assert first.set_fields["metadata_seq"] == 1
    again = plan(first.track, [], pipeline=None, now=now, cause="t",
                 asset_fields={"update_metadata": Flag.YES})
    assert again.changed and again.set_fields == {"metadata_seq": 2} | {
        k: v for k, v in again.set_fields.items() if k != "metadata_seq"
    }
    assert again.track.metadata_seq == 2
    cleared = plan(again.track, [], pipeline=None, now=now, cause="t",
                   asset_fields={"update_metadata": Flag.NO})
    assert cleared.track.metadata_seq == 2


def test_wake_ups_follow_the_flags() -> None:
    track = make_track("g-3")
    assert wanted_steps(track) == ["create"]
    track = track.model_copy(update={"is_in_ars": Flag.YES, "has_new_file": Flag.YES,
                                     "has_open_share": Flag.YES, "update_metadata": Flag.YES})
    assert wanted_steps(track) == ["upload", "metadata"]
    closed = track.model_copy(update={"has_open_share": Flag.NO, "erda_sync": Flag.YES})
    # The upload waits for the share the reopen opens: that write wakes it.
    assert wanted_steps(closed) == ["reopen", "metadata"]
    track = track.model_copy(update={"has_new_file": Flag.AWAIT, "update_metadata": Flag.NO})
    assert wanted_steps(track) == ["create", "synchronise"]
    track = track.model_copy(update={"erda_sync": Flag.AWAIT})
    assert wanted_steps(track) == ["create", "confirm"]


def test_with_ars_the_load_job_waits_for_the_files_in_ars() -> None:
    pipelines = require_files_in_ars(load_pipelines())
    load = pipelines["PIPEHERB0001"].spec("load")
    assert load.requires == {"is_in_ars": Flag.YES, "erda_sync": Flag.YES}
    assert pipelines["PIPEHERB0001"].spec("barcode").requires == {}
    assert load_pipelines()["PIPEHERB0001"].spec("load").requires == {}  # not mutated


def budget(*open_shares: tuple[float, bool]) -> ShareBudget:
    return ShareBudget.from_open(
        open_shares, max_total_mb=10, max_original_mb=6, max_derivative_mb=5
    )


def test_shares_are_admitted_while_they_fit_under_every_cap() -> None:
    b = budget((4, False), (1, True))
    assert b.admit(2, derivative=False)  # originals 6 of 6
    assert not b.admit(1, derivative=False)  # the originals' cap
    assert b.admit(3, derivative=True)  # derivatives 4 of 5, total 10 of 10
    assert not b.admit(1, derivative=True)  # the total cap
    assert b.used_mb == 10


def test_an_asset_larger_than_a_cap_goes_alone_and_only_alone() -> None:
    assert budget().admit(50, derivative=False)
    assert not budget((1, True)).admit(50, derivative=False)
