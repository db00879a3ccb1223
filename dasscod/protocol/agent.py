"""Bodies of the pull agent's requests and the daemon's answers (`/api/v1/agent/{cluster}/`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from dasscod.cluster import torque_parse
from dasscod.cluster.base import SchedulerState
from dasscod.model import GUID_PATTERN

#: A scheduler job id as Slurm and Torque write them (Torque: `123[4].server`).
JOB_ID = r"^[A-Za-z0-9][A-Za-z0-9._\[\]-]{0,99}$"


class ClaimRequest(BaseModel):
    max: int = Field(default=10, ge=1, le=200, description="at most this many jobs")


class ClaimedJob(BaseModel):
    asset_guid: str
    job: str
    attempt: int
    name: str = Field(description="the scheduler job name: look for it before submitting")
    submit_with: str = Field(description="torque (qsub) or slurm (sbatch)")
    script: str = Field(description="the batch script; holds the job's token: write it 0600")


class AttemptRef(BaseModel):
    asset_guid: str = Field(pattern=GUID_PATTERN)
    job: str = Field(min_length=1, max_length=100)
    attempt: int = Field(ge=1)


class SubmittedReport(AttemptRef):
    hpc_job_id: str = Field(pattern=JOB_ID)


class RefusedReport(AttemptRef):
    message: str = Field(min_length=1, max_length=4000,
                         description="the submit command's complaint (stderr, else stdout)")
    exit_status: int | None = Field(default=None,
                                    description="the submit command's exit status")


class LiveJob(BaseModel):
    asset_guid: str
    job: str
    attempt: int
    name: str
    hpc_job_id: str
    status: str


class ObservedJob(AttemptRef):
    hpc_job_id: str = Field(pattern=JOB_ID)
    state: SchedulerState
    exit_code: int | None = None
    reason: str | None = Field(default=None, max_length=2000)
    exit_file: str | None = Field(
        default=None, max_length=500,
        description="the first line of the job's exit file (<state_dir>/<name>.exit, written "
        "by the Torque job script as its last act), for a job whose state is UNKNOWN: the "
        "daemon reads how the job ended from it",
    )

    def outcome(self) -> ObservedJob:
        """This observation with an UNKNOWN state replaced by what the exit file says (the
        agent's reason, that the scheduler did not say, is moot then)."""
        record = (torque_parse.parse_exit_record(self.exit_file)
                  if self.exit_file and self.state is SchedulerState.UNKNOWN else None)
        if record is None:
            return self
        state, code, reason = record.outcome()
        return self.model_copy(update={
            "state": state, "exit_code": code, "reason": reason,
        })  # fmt: skip


class StatusReport(BaseModel):
    jobs: list[ObservedJob] = Field(default_factory=list, max_length=10_000)


class ForgetOrder(BaseModel):
    """A settled asset whose files on the cluster the agent is to remove (retention)."""

    asset_guid: str
    work_dir: str = Field(description="the asset's work folder on the cluster (its last "
                          "component is the guid): removed with everything in it")
    names: list[str] = Field(description="scheduler names of the asset's attempts there: "
                             "<state-dir>/<name>{,.sh,.out,.err,.exit} are removed")


class ReportAnswer(BaseModel):
    cancel: list[str] = Field(description="scheduler job ids to cancel (qdel / scancel)")
    lost: int = Field(description="jobs the report ended (gone without a final callback)")
    submitted: int = Field(description="job ids the report recorded (found after a crash)")
    forget: list[ForgetOrder] = Field(
        default_factory=list,
        description="assets whose files to remove; report each done with `forgotten`",
    )


class ForgottenReport(BaseModel):
    asset_guids: list[Annotated[str, Field(pattern=GUID_PATTERN)]] = Field(
        max_length=1000,
        description="assets whose files on the cluster the agent removed (as a report's "
        "answer asked)",
    )


class ForgottenAnswer(BaseModel):
    cleared: int = Field(description="assets taken off the cluster's clean-up list")
