"""The ARS wire shapes we use, from the contract (`asset-service-openapi-2024-12.yaml`) and, for
the file proxy (not part of that file), from the file proxy's public API.

Models ignore nothing: unknown fields are kept (`extra="allow"`) so an `Asset` read from ARS and
written back in a full-body update loses no field a newer ARS added. Field names are the wire
names; the two camelCase ones (`updateUser`, `httpInfo`) get snake_case aliases in Python.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_wire(self) -> dict[str, Any]:
        """The JSON body: wire names, no unset optionals (ARS treats absent and null alike)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class InternalStatus(StrEnum):
    """ARS's file status of an asset (`internal_status`): where its files are on the way to ERDA."""

    METADATA_RECEIVED = "METADATA_RECEIVED"
    ASSET_RECEIVED = "ASSET_RECEIVED"
    COMPLETED = "COMPLETED"
    ERDA_FAILED = "ERDA_FAILED"
    ERDA_ERROR = "ERDA_ERROR"


#: The statuses `setstatus` accepts (COMPLETED has its own endpoint).
SETTABLE_STATUSES = frozenset(
    {InternalStatus.ASSET_RECEIVED, InternalStatus.ERDA_FAILED, InternalStatus.ERDA_ERROR}
)


class AllocationStatus(StrEnum):
    DISK_FULL = "DISK_FULL"
    SUCCESS = "SUCCESS"
    BAD_REQUEST = "BAD_REQUEST"
    UNKNOWN_ERROR = "UNKNOWN_ERROR"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    SHARE_NOT_FOUND = "SHARE_NOT_FOUND"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class HttpInfo(_Wire):
    """Where an asset's share lives and how much room it has."""

    path: str | None = None
    hostname: str | None = None
    total_storage_mb: int | None = None
    cache_storage_mb: int | None = None
    remaining_storage_mb: int | None = None
    allocated_storage_mb: int | None = None
    allocation_status_text: str | None = None
    http_allocation_status: str | None = None

    @property
    def ok(self) -> bool:
        return self.http_allocation_status == AllocationStatus.SUCCESS

    @property
    def share_url(self) -> str | None:
        """hostname + path: the base every file link of the share starts with."""
        if not self.hostname or not self.path:
            return None
        return self.hostname.rstrip("/") + "/" + self.path.lstrip("/")


class Specimen(_Wire):
    institution: str | None = None
    collection: str | None = None
    barcode: str | None = None
    specimen_pid: str | None = None
    preparation_type: str | None = None


class Event(_Wire):
    user: str | None = None
    timestamp: datetime | None = Field(default=None, alias="timeStamp")
    event: str | None = None
    pipeline: str | None = None
    workstation: str | None = None


class Asset(_Wire):
    """The contract's `Asset`: the body of create and (full-body) update, and what reads return."""

    asset_pid: str | None = None
    asset_guid: str
    status: str | None = None
    multi_specimen: bool | None = None
    specimens: list[Specimen] | None = None
    funding: str | None = None
    subject: str | None = None
    payload_type: str | None = None
    file_formats: list[str] | None = None
    asset_locked: bool | None = None
    restricted_access: list[str] | None = None
    tags: dict[str, str] | None = None
    audited: bool | None = None
    created_date: datetime | None = None
    date_metadata_updated: datetime | None = None
    date_asset_taken: datetime | None = None
    date_asset_deleted: datetime | None = None
    date_asset_finalised: datetime | None = None
    date_metadata_taken: datetime | None = None
    institution: str | None = None
    parent_guid: str | None = None
    collection: str | None = None
    http_info: HttpInfo | None = Field(default=None, alias="httpInfo")
    internal_status: str | None = None
    update_user: str | None = Field(default=None, alias="updateUser")
    events: list[Event] | None = None
    digitiser: str | None = None
    workstation: str | None = None
    pipeline: str | None = None
    error_message: str | None = None
    error_timestamp: datetime | None = None

    def missing_for_update(self) -> list[str]:
        """Fields the contract requires of an update ("at least: Institution, Workstation,
        Pipeline, Collection, Status and updateUser"), checked before we send anything."""
        required = {
            "institution": self.institution,
            "workstation": self.workstation,
            "pipeline": self.pipeline,
            "collection": self.collection,
            "status": self.status,
            "updateUser": self.update_user,
        }
        return [name for name, value in required.items() if not value]


class AssetStatusInfo(_Wire):
    asset_guid: str | None = None
    parent_guid: str | None = None
    error_timestamp: datetime | None = None
    status: str | None = None
    error_message: str | None = None
    #: Size of the open share; None when the asset has no share.
    share_allocation_mb: int | None = None


class MinimalAsset(_Wire):
    """Enough to locate an asset's files: guid, parent, institution, collection."""

    asset_guid: str
    parent_guid: str | None = None
    institution: str
    collection: str


class AssetUpdateRequest(_Wire):
    """Body of `complete`: which asset, and who/where completes it."""

    minimal_asset: MinimalAsset = Field(alias="minimalAsset")
    workstation: str
    pipeline: str
    digitiser: str | None = None


class FileUploadResult(_Wire):
    """The file proxy's answer to an upload: the CRC-32 we sent and the one it computed."""

    expected_crc: int = Field(alias="expectedCRC")
    actual_crc: int = Field(alias="actualCRC")
