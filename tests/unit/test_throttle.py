"""The throttle shares slots by pipeline stage: a later stage leaves a freed slot to an earlier
stage that is waiting for one on the same cluster, and goes ahead once it has been served."""

from __future__ import annotations

from dasscod.coordination import Throttle, Wakeups
from dasscod.model import JobStatus, Track
from dasscod.pipeline import pipeline_stages
from dasscod.pipelines import load_pipelines
from tests.conftest import make_track


def running_on(guid: str, cluster: str, version: int = 1) -> Track:
    track = make_track(guid).model_copy(update={"in_flight": True, "version": version})
    track.job_list[0].status, track.job_list[0].cluster = JobStatus.RUNNING, cluster
    return track


def finished(track: Track) -> Track:
    return track.model_copy(update={"in_flight": False, "version": track.version + 1})


def throttle(**slots: int) -> Throttle:
    return Throttle(assets_in_flight=10, jobs_per_cluster=slots, wakeups=Wakeups(),
                    stages={"barcode": 1, "ocr": 2})


def test_a_freed_slot_goes_to_the_earlier_stage_that_waits_for_it() -> None:
    t = throttle(a=1)
    busy = running_on("busy", "a")
    t.observe(busy)
    assert t.reserve(make_track("early"), ["a"], "barcode") is None  # full: barcode waits
    t.observe(finished(busy))  # the slot frees
    assert t.reserve(make_track("late"), ["a"], "ocr") is None  # left to the barcode
    assert t.reserve(make_track("early"), ["a"], "barcode") == "a"
    t.release("early", "a")
    t.served("barcode")
    assert t.reserve(make_track("late"), ["a"], "ocr") == "a"  # served: the rest may go


def test_an_earlier_stage_waiting_elsewhere_holds_nothing_back() -> None:
    t = throttle(a=1, b=1)
    t.observe(running_on("busy", "a"))
    assert t.reserve(make_track("early"), ["a"], "barcode") is None
    assert t.reserve(make_track("late"), ["b"], "ocr") == "b"


def test_serving_the_earlier_stage_wakes_the_later_ones_it_held_back() -> None:
    t = throttle(a=1)
    busy = running_on("busy", "a")
    t.observe(busy)
    assert t.reserve(make_track("early"), ["a"], "barcode") is None
    t.observe(finished(busy))
    assert t.reserve(make_track("late"), ["a"], "ocr") is None
    woken = t.wakeups.arm("ocr")
    t.wake_when_freed("ocr")
    t.served("barcode")  # e.g. its asset was claimed by nobody after all
    assert woken.is_set()


def test_stages_follow_the_pipelines_priorities() -> None:
    pipelines = load_pipelines()
    herb = pipeline_stages([pipelines["PIPEHERB0001"]])
    assert herb == {"load": 0, "barcode": 1, "ocr": 2, "derivatives": 3, "upload": 4,
                    "clean_up": 5}
    both = pipeline_stages(pipelines.values())
    assert both["ocr"] == 1  # PIOF0001 runs it beside the barcode: the earlier stage counts
    assert both["barcode"] == 1


def test_a_job_whose_end_is_being_written_gives_its_slot_to_a_waiting_job() -> None:
    t = throttle(a=1)
    busy = running_on("busy", "a")
    t.observe(busy)
    assert t.reserve(make_track("next"), ["a"], "barcode") is None
    woken = t.wakeups.arm("barcode")
    t.wake_when_freed("barcode")
    with t.ending("busy", busy.job_list[0].name):
        assert woken.is_set(), "the blocked dispatcher is woken as the end is reported"
        assert t.reserve(make_track("next"), ["a"], "barcode") == "a"
        t.release("next", "a")
        t.observe(finished(busy))  # the write lands


def test_an_end_that_was_not_written_takes_its_slot_back() -> None:
    t = throttle(a=1)
    busy = running_on("busy", "a")
    t.observe(busy)
    with t.ending("busy", busy.job_list[0].name):
        assert t.active_jobs("a") == 0
    # The write failed (the store was down, say): the job still runs as far as we know.
    assert t.active_jobs("a") == 1
    assert t.reserve(make_track("next"), ["a"], "barcode") is None


def test_ending_a_job_the_throttle_does_not_count_wakes_nobody() -> None:
    t = throttle(a=1)
    t.observe(running_on("busy", "a"))
    woken = t.wakeups.arm("barcode")
    t.wake_when_freed("barcode")
    with t.ending("other", "load"):
        assert not woken.is_set()
        assert t.active_jobs("a") == 1
