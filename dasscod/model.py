"""Documents and vocabularies shared by every part of the daemon.

Field names follow docs/domain.md so that data and HPC scripts from the current DaSSCo integration
server stay recognisable; what we add (attempt, cluster, end time, last error, history, version)
sits beside them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dasscod.bounds import Document, Moment, Texts, check_document


def utcnow() -> datetime:
    """Every time the daemon writes is timezone-aware UTC (the current system mixes naive local
    times and strings, which breaks date queries)."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """A time from outside (a callback, a delivery): naive ones are taken as UTC, which is
    also how MongoDB reads them back."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def validation_problems(exc: ValidationError) -> str:
    """What a document lacks, one `field.path: message` per problem, for a refusal that says
    what to fix."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
        for err in exc.errors()
    )


class JobStatus(StrEnum):
    WAITING = "WAITING"
    STARTING = "STARTING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    RETRY = "RETRY"
    ERROR = "ERROR"
    CRITICAL_ERROR = "CRITICAL_ERROR"
    PAUSED = "PAUSED"
    STOPPED = "STOPPED"
    #: Stopped by an operator (`dasscod cancel`): terminal, and never counted as an error.
    CANCELLED = "CANCELLED"
    NONE = "NONE"


class Flag(StrEnum):
    YES = "YES"
    NO = "NO"
    AWAIT = "AWAIT"
    UPLOADING = "UPLOADING"
    PAUSED = "PAUSED"
    ERROR = "ERROR"
    CRITICAL_ERROR = "CRITICAL_ERROR"


class AssetType(StrEnum):
    SPECIMEN = "SPECIMEN"
    LABEL = "LABEL"
    DEVICE_TARGET = "DEVICE_TARGET"
    UNKNOWN = "UNKNOWN"


#: The barcode reader's `asset_subject` words and the asset type each one means.
SUBJECT_TO_TYPE: dict[str, AssetType] = {
    "specimen": AssetType.SPECIMEN,
    "label": AssetType.LABEL,
    "device target": AssetType.DEVICE_TARGET,
}


#: `hpc_job_id` of an attempt that no scheduler has given an id yet (DaSSCo's value).
NEVER_QUEUED: Final = -9


class Job(BaseModel):
    """One element of `track.job_list`."""

    model_config = ConfigDict(extra="ignore")

    name: str
    priority: int
    status: JobStatus = JobStatus.WAITING
    attempt: int = 0  # number of submissions so far; the n-th submission runs attempt n
    max_attempts: int = 3
    cluster: str | None = None
    hpc_job_id: str | int = NEVER_QUEUED
    job_claimed_time: datetime | None = None  # when the dispatcher took it (STARTING)
    job_queued_time: datetime | None = None
    job_start_time: datetime | None = None
    job_end_time: datetime | None = None
    not_before: datetime | None = None  # a RETRY job is not claimed before this time
    last_error: str | None = None
    exit_state: str | None = None
    run_time_s: float | None = None
    #: Pull clusters: a STARTING job handed to the cluster's agent is not handed out again
    #: before this time (the agent died if it has not reported the job id by then).
    lease_until: datetime | None = None

    @property
    def has_scheduler_id(self) -> bool:
        """Whether a scheduler gave this attempt an id (stored as a string or, unset, as the
        integer NEVER_QUEUED)."""
        return str(self.hpc_job_id) != str(NEVER_QUEUED)


class FileEntry(BaseModel):
    """One element of `track.file_list`."""

    name: str
    type: str
    file_size: float  # MB, as in the current system
    check_sum: int  # CRC-32 as an unsigned integer
    #: Hex SHA-256 of a derivative made on the cluster, reported by the job: its bytes are
    #: checked against it when they are handed over (CRC-32 alone can be forged).
    sha256: str | None = None
    time_added: datetime = Field(default_factory=utcnow)
    deleted: bool = False
    erda_sync: Flag = Flag.NO
    ars_link: str = ""


class AgentCleanup(BaseModel):
    """What one pull cluster's agent is to remove of a settled asset: its work folder and
    the state files of its jobs' attempts there (scripts, output, exit files)."""

    cluster: str
    work_dir: str
    #: Scheduler names of the attempts that ran on the cluster (`dassco.<guid>.<job>.<n>`).
    names: list[str]


class HistoryEntry(BaseModel):
    """One transition, appended to `track.history` in the same write that makes it."""

    at: datetime
    job: str | None  # None for asset-level transitions
    attempt: int | None = None
    from_: str = Field(alias="from")
    to: str
    cause: str
    #: Job transitions: the attempt's cluster and scheduler job id, so that every attempt of
    #: a job can be told from the history after the job's own fields moved on to the next.
    cluster: str | None = None
    hpc_job_id: str | None = None
    #: Asset-level transitions: the flag that changed (e.g. `available_for_services`).
    field: str | None = None
    #: A failed attempt's error, as the job's `last_error` said it at that moment.
    error: str | None = None
    #: Operator actions: the name of the control token that asked, and the reason given.
    by: str | None = None
    reason: str | None = None

    model_config = ConfigDict(populate_by_name=True)

    def to_document(self) -> dict[str, Any]:
        """The stored form; the optional fields are left out when empty, so the history of an
        automatic transition costs no more than it used to."""
        data = self.model_dump(by_alias=True, mode="python")
        for name in OPTIONAL_HISTORY_FIELDS:
            if data.get(name) is None:
                data.pop(name, None)
        return data


#: HistoryEntry fields written only when they hold something.
OPTIONAL_HISTORY_FIELDS = ("field", "cluster", "hpc_job_id", "error", "by", "reason")


class Track(BaseModel):
    """A `track` document: an asset's processing state. `_id` is the asset guid."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str = Field(alias="_id")
    pipeline: str
    batch_list_name: str = ""
    created_timestamp: datetime = Field(default_factory=utcnow)
    asset_size: float = -1
    asset_type: AssetType = AssetType.UNKNOWN
    parent_guid: str | None = None
    jobs_status: JobStatus = JobStatus.WAITING
    job_list: list[Job] = Field(default_factory=list)
    file_list: list[FileEntry] = Field(default_factory=list)
    # Derived from job_list by the state machine on every write, so that the dispatcher's and
    # housekeeping's queries are single indexed lookups.
    ready: list[str] = Field(default_factory=list)
    ready_since: datetime | None = None
    retry_due: datetime | None = None
    in_flight: bool = False
    active_clusters: list[str] = Field(default_factory=list)
    #: What the supervisors' queries look for (see `dasscod.queues`): derived, like `ready`.
    queues: list[str] = Field(default_factory=list)
    # ARS / storage flags (docs/domain.md); the ARS supervisor drives most of them.
    is_in_ars: Flag = Flag.NO
    has_new_file: Flag = Flag.NO
    has_open_share: Flag = Flag.NO
    erda_sync: Flag = Flag.NO
    update_metadata: Flag = Flag.NO
    hpc_ready: Flag = Flag.NO
    files_status: JobStatus = JobStatus.NONE
    available_for_services: Flag = Flag.YES
    available_for_services_timestamp: datetime | None = None
    available_for_services_wait_time: int | None = None
    temporary_files_local: Flag = Flag.NO
    temporary_path_local: str = ""
    #: Pull clusters whose agent has yet to remove this asset's files there (retention,
    #: `services.agent`): written when the daemon removed its own copy, dropped per cluster
    #: once that cluster's agent reports the removal done.
    agent_cleanup: list[AgentCleanup] = Field(default_factory=list)
    proxy_path: str = ""
    #: Incremented in the same write every time `update_metadata` is set to YES, so the ARS
    #: sync clears the flag only if nothing changed while its push was in flight.
    metadata_seq: int = 0
    #: The ARS sync leaves this asset alone until then (backoff after ARS was unavailable).
    ars_not_before: datetime | None = None
    #: What ARS said when it refused a call for this asset (the flag concerned is ERROR).
    ars_error: str | None = None
    #: ERDA synchronisations of the current files that ended in ERDA_ERROR.
    erda_failures: int = 0
    #: When the current ERDA synchronisation was requested (`erda_sync` → AWAIT).
    erda_sync_since: datetime | None = None
    #: How often the current synchronisation was found stuck past `erda_timeout_s`.
    erda_timeouts: int = 0
    history: list[HistoryEntry] = Field(default_factory=list)
    #: Incremented by every write: the compare-and-set guard of the whole document.
    version: int = 0

    def job(self, name: str) -> Job:
        for job in self.job_list:
            if job.name == name:
                return job
        raise KeyError(f"asset {self.id} has no job {name!r}")

    @property
    def paused(self) -> bool:
        """Held back from services (`available_for_services` not YES): its running job
        finishes, no next job is claimed."""
        return self.available_for_services is not Flag.YES

    @property
    def failed_jobs(self) -> list[Job]:
        """The jobs that failed the asset (ERROR, CRITICAL_ERROR), in pipeline order."""
        return [j for j in self.job_list if j.status in (JobStatus.ERROR,
                                                           JobStatus.CRITICAL_ERROR)]

    def to_document(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="python")


class Metadata(BaseModel):
    """A `metadata` document: the asset's metadata as exchanged with ARS.

    Validation is lenient where the current data is inconsistent (list-or-string fields) and
    strict where the daemon depends on a value (guid, pipeline, institution, collection, dates).
    """

    model_config = ConfigDict(extra="allow")

    asset_guid: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    asset_pid: str = ""
    parent_guid: str | None = None
    institution: str = Field(min_length=1)
    collection: str = Field(min_length=1)
    pipeline_name: str = Field(min_length=1)
    workstation_name: str = Field(min_length=1)
    digitiser: str = ""
    date_asset_taken: Moment
    date_metadata_created: Moment | None = None
    date_metadata_updated: Moment | None = None
    file_format: str = ""
    payload_type: str | Texts = "image"
    preparation_type: str | Texts = ""
    funding: str = ""
    barcode: Texts = Field(default_factory=list)
    asset_subject: str = ""
    multispecimen: bool = False
    specimen_pid: str | Texts = ""
    restricted_access: Texts = Field(default_factory=list)
    tags: Document = Field(default_factory=dict)
    status: str = ""
    audited: bool = False
    external_publisher: Texts = Field(default_factory=list)
    metadata_created_by: str = ""
    metadata_updated_by: str = ""
    metadata_uploaded_by: str = ""

    @model_validator(mode="after")
    def _extra_fields_bounded(self) -> Metadata:
        """Extra fields are kept as they come: bounded like any free-form document."""
        check_document(dict(self.model_extra or {}), "metadata")
        return self

    @property
    def batch_list_name(self) -> str:
        """Workstation plus capture date: MOS labels are unique only within one batch."""
        return f"{self.workstation_name}_{self.date_asset_taken.date().isoformat()}"


class Mos(BaseModel):
    """A `mos` document, created when the barcode reader reports a multi-object specimen."""

    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(alias="_id")
    label: bool
    disposable_id: str
    unique_label_id: str
    label_connections: list[str] = Field(default_factory=list)
    spid: str


GUID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
