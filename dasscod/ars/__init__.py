"""The ARS client: asset metadata, file shares and uploads, ERDA sync, with OAuth2 tokens,
timeouts, bounded retries and typed errors. `devstack.ars` holds a simulator to test it against.
"""

from dasscod.ars.client import ArsClient, crc32, size_mb
from dasscod.ars.errors import (
    ArsAuthError,
    ArsBadRequest,
    ArsChecksumMismatch,
    ArsConflict,
    ArsError,
    ArsForbidden,
    ArsNotFound,
    ArsRejected,
    ArsThrottled,
    ArsUnavailable,
)
from dasscod.ars.models import (
    Asset,
    AssetStatusInfo,
    AssetUpdateRequest,
    Event,
    FileUploadResult,
    HttpInfo,
    InternalStatus,
    MinimalAsset,
    Specimen,
)
from dasscod.ars.settings import ArsSettings

__all__ = [
    "ArsAuthError",
    "ArsBadRequest",
    "ArsChecksumMismatch",
    "ArsClient",
    "ArsConflict",
    "ArsError",
    "ArsForbidden",
    "ArsNotFound",
    "ArsRejected",
    "ArsSettings",
    "ArsThrottled",
    "ArsUnavailable",
    "Asset",
    "AssetStatusInfo",
    "AssetUpdateRequest",
    "Event",
    "FileUploadResult",
    "HttpInfo",
    "InternalStatus",
    "MinimalAsset",
    "Specimen",
    "crc32",
    "size_mb",
]
