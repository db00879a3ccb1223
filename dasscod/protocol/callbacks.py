"""Bodies of the job callbacks and of the reads jobs make: the contract with `hpc/`.

Field names follow the current system's callbacks (docs/domain.md) where one existed, so HPC
scripts written for it stay recognisable.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dasscod.bounds import Document, Moment, Texts
from dasscod.filenames import FILE_NAME_PATTERN
from dasscod.model import GUID_PATTERN

Guid = Field(pattern=GUID_PATTERN)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BarcodeResult(_Body):
    """What the barcode reader found on one image."""

    barcodes: list[str] = Field(default_factory=list, max_length=1000)
    asset_subject: Literal["specimen", "label", "device target"]
    MSO: bool = False
    MOS: bool = False
    label: bool = False
    disposable: str | None = None


class JobResults(_Body):
    """Results a finished job reports; each part is optional."""

    asset_ready: bool = False
    metadata: Document | None = None
    barcode: BarcodeResult | None = None
    clean_up: bool = False
    derivatives: Texts = Field(default_factory=list, description="guids registered")


class JobCallback(_Body):
    asset_guid: str = Guid
    job: str = Field(min_length=1, max_length=100)
    attempt: int | None = Field(default=None, ge=1, le=1_000_000)
    timestamp: Moment | None = None


class QueuedCallback(JobCallback):
    hpc_job_id: str = Field(min_length=1, max_length=100)


class StartedCallback(JobCallback):
    hpc_job_id: str | None = Field(default=None, max_length=100)


class FinishedCallback(JobCallback):
    run_time_s: float | None = Field(default=None, ge=0)
    results: JobResults = Field(default_factory=JobResults)


class FailedCallback(JobCallback):
    run_time_s: float | None = Field(default=None, ge=0)
    reason: str = Field(default="no reason given", max_length=4000)
    exit_code: int | None = Field(default=None, ge=-(2**31), le=2**31 - 1)
    retryable: bool = True
    exception: str | None = Field(default=None, max_length=20000)


class BarcodeCallback(BarcodeResult):
    """The current system's barcode callback: a barcode result that also ends the job."""

    job: str = "barcode"
    status: Literal["DONE", "ERROR"] = "DONE"


class MetadataUpdate(_Body):
    """Generic job result (e.g. OCR text): merged into the asset's metadata."""

    job: str = Field(min_length=1, max_length=100)
    status: Literal["DONE", "ERROR"] = "DONE"
    data: Document = Field(default_factory=dict)


class FileInfo(_Body):
    #: The one file-name rule of dasscod.filenames (as for intake and load).
    name: str = Field(pattern=FILE_NAME_PATTERN)
    type: str = Field(min_length=1, max_length=16)
    check_sum: int = Field(ge=0, le=0xFFFFFFFF)
    file_size: float = Field(ge=0, le=1_000_000, description="MB")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                               description="hex SHA-256; required for a file whose bytes are "
                                           "then sent with PUT")


class DerivativeFailed(_Body):
    ppi: int | None = Field(default=None, ge=0, le=1_000_000)
    note: str | None = Field(default=None, max_length=2000)


class Ack(BaseModel):
    """Every callback's answer. `applied: false` is still an acknowledgement: the event was a
    duplicate or no longer relevant, and the caller must not send it again."""

    applied: bool
    status: str | None = None
    detail: str | None = None


class FileLink(BaseModel):
    name: str
    type: str
    check_sum: int
    file_size: float
    ars_link: str
    local_path: str | None = None


class AssetLinks(BaseModel):
    asset_guid: str
    files: list[FileLink]


class Problem(BaseModel):
    """Every refusal's body: what went wrong and, where it helps, what to do."""

    detail: Any


def refusals(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the refusals a route can give, so the contract lists them."""
    meaning = {
        400: "the request cannot be parsed",
        401: "missing, invalid or expired credential",
        403: "the credential is not for this asset, job, route or cluster",
        404: "no such asset, job or file",
        408: "the body came too slowly (listener.body_timeout_s, body_min_rate); the "
             "connection is closed",
        409: "the token's attempt is not the live one, or the asset or file already exists",
        413: "the body is over this route's cap (or the reported file size)",
        422: "the body or a parameter is invalid (the detail names it)",
        503: "the database is unreachable, the daemon is not the leader or the work is held; "
             "retry after Retry-After",
    }
    return {status: {"model": Problem, "description": meaning[status]} for status in statuses}
