"""The `queues` tags: what each flag value and job state puts an asset in."""

from __future__ import annotations

import pytest

from dasscod.model import Flag, JobStatus
from dasscod.pipeline import derive
from dasscod.pipelines import load_pipelines
from dasscod.queues import ArsFlag, flag_tag, queue_tags
from tests.conftest import make_track


def test_only_the_values_a_step_looks_for_are_tagged() -> None:
    track = make_track("a").model_copy(
        update={"is_in_ars": Flag.YES, "erda_sync": Flag.AWAIT, "update_metadata": Flag.NO,
                "has_open_share": Flag.YES, "available_for_services": Flag.PAUSED}
    )
    assert queue_tags(track, in_flight=True, active_clusters=["x", "y"]) == [
        "in_flight", "on:x", "on:y", "paused", "erda_sync=AWAIT", "has_open_share=YES",
    ]  # fmt: skip


def test_a_new_asset_waits_to_be_created_in_ars_and_nothing_else() -> None:
    pipelines = load_pipelines()
    track = make_track("a")
    tags = derive(track, pipeline=pipelines[track.pipeline], now=track.created_timestamp)
    # Besides the ARS step it waits for: what operators list it by (status, the job it is at).
    assert tags["queues"] == ["is_in_ars=NO", "status:WAITING", "at:load"]


def test_operators_find_an_asset_by_status_by_its_failed_job_and_by_an_ars_refusal() -> None:
    pipelines = load_pipelines()
    track = make_track("a").model_copy(update={"ars_error": "ARS said no", "is_in_ars": Flag.YES})
    track.job_list[0].status = JobStatus.DONE
    track.job_list[1].status = JobStatus.ERROR
    tags = derive(track, pipeline=pipelines[track.pipeline], now=track.created_timestamp)
    assert tags["queues"] == ["ars_error", "status:ERROR", "at:barcode"]
    for job in track.job_list:
        job.status = JobStatus.DONE
    tags = derive(track, pipeline=pipelines[track.pipeline], now=track.created_timestamp)
    assert tags["queues"] == ["ars_error", "status:DONE"], "a finished asset is at no job"


@pytest.mark.parametrize(("flag", "value"), [("erda_sync", Flag.YES), ("has_new_file", Flag.YES)])
def test_asking_for_an_untagged_value_is_an_error(flag: ArsFlag, value: Flag) -> None:
    with pytest.raises(ValueError, match="not a queue"):
        flag_tag(flag, value)
