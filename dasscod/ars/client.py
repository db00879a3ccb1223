"""`ArsClient`: every ARS call the daemon makes, over one httpx connection pool.

Each public method is one ARS endpoint with its exact path, verb and fields; all of them go
through `_send`, which holds the rules once:

- a timeout on every request (`timeout_s`, or `transfer_timeout_s` for file bodies);
- a bearer token from `ClientCredentials`, renewed before expiry and once more on a 401;
- retries with exponential backoff and jitter (stamina) on connection errors, timeouts, 5xx and
  429 (waiting what Retry-After asks, up to `retry_after_max_s`), within `retry_attempts` and
  `retry_timeout_s`; never on other 4xx, which ARS will answer the same way again;
- every failure surfaces as an `ArsError` subclass (see `dasscod.ars.errors`).

Retrying a POST after a timeout can repeat a call ARS already performed. The calls that are not
naturally idempotent (create asset, create share) then fail with `ArsBadRequest`/`ArsConflict`;
the caller resolves that by reading the asset's state (see the README's sync design).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
import stamina

from dasscod import metrics
from dasscod.ars.auth import BearerAuth, ClientCredentials
from dasscod.ars.errors import (
    ArsError,
    ArsNotFound,
    ArsThrottled,
    ArsUnavailable,
    error_from_response,
)
from dasscod.ars.models import (
    SETTABLE_STATUSES,
    Asset,
    AssetStatusInfo,
    AssetUpdateRequest,
    Event,
    FileUploadResult,
    HttpInfo,
    InternalStatus,
    MinimalAsset,
)
from dasscod.ars.settings import ArsSettings
from dasscod.log import get_logger

log = get_logger(__name__)


def crc32(data: bytes) -> int:
    """CRC-32 as ARS computes it (java.util.zip.CRC32): an unsigned 32-bit integer."""
    return zlib.crc32(data) & 0xFFFFFFFF


def size_mb(n_bytes: int) -> int:
    """Whole MB (10^6 bytes, as ARS counts), rounded up; at least 1 (ARS refuses 0)."""
    return max(1, math.ceil(n_bytes / 1_000_000))


def _seg(value: str) -> str:
    return quote(value, safe="")


def _file_path(path: str) -> str:
    """A relative file path inside a share, each segment escaped, no traversal."""
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"invalid file path in a share: {path!r}")
    return "/".join(_seg(p) for p in parts)


def _check_allocation(allocation_mb: int) -> None:
    """ARS opens no share of less than 1 MB."""
    if allocation_mb < 1:
        raise ValueError("allocation_mb must be at least 1")


class ArsClient:
    """The daemon's one ARS client. Use as `async with ArsClient(settings) as ars:`."""

    def __init__(
        self,
        settings: ArsSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._base = settings.base_url.rstrip("/")
        self._proxy = settings.proxy_url
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_s),
            limits=httpx.Limits(max_connections=settings.max_connections),
            transport=transport,
            headers={"Accept": "application/json"},
        )
        self.credentials = ClientCredentials(
            self._http,
            token_url=settings.token_url,
            client_id=settings.client_id,
            client_secret=settings.secret(),
            leeway_s=settings.token_leeway_s,
        )
        self._auth = BearerAuth(self.credentials)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---------------------------------------------------------------- asset service

    async def create_asset(self, asset: Asset, *, allocation_mb: int) -> Asset:
        """Create the asset and open its share of `allocation_mb` MB in one call.

        Check `result.http_info.ok`: ARS may create the asset yet fail the allocation
        (e.g. DISK_FULL), which is not an HTTP error.
        """
        _check_allocation(allocation_mb)
        response = await self._send(
            "POST",
            f"{self._base}/v1/assetmetadata",
            what=f"create asset {asset.asset_guid}",
            params={"allocation_mb": allocation_mb},
            json=asset.to_wire(),
        )
        return Asset.model_validate(response.json())

    async def get_asset(self, guid: str) -> Asset:
        """Read the asset; `ArsNotFound` if ARS does not know it (the contract answers 204)."""
        found = await self._get_found(f"{self._base}/v1/assetmetadata/{_seg(guid)}",
                                      what=f"get asset {guid}")
        return Asset.model_validate(found.json())

    async def update_asset(self, asset: Asset) -> Asset:
        """Full-body update. ARS replaces the metadata with `asset` and logs an event by
        `updateUser` from `pipeline`/`workstation`; set `update_user` or the settings' one is
        used. A locked asset is refused (`ArsBadRequest`): unlock it first."""
        if asset.update_user is None:
            asset = asset.model_copy(update={"update_user": self.settings.update_user})
        missing = asset.missing_for_update()
        if missing:
            raise ValueError(f"update of {asset.asset_guid} lacks {', '.join(missing)}")
        response = await self._send(
            "PUT",
            f"{self._base}/v1/assetmetadata/{_seg(asset.asset_guid)}",
            what=f"update asset {asset.asset_guid}",
            json=asset.to_wire(),
        )
        return Asset.model_validate(response.json())

    async def delete_asset(self, guid: str) -> None:
        """Mark the asset deleted (ARS keeps metadata and files, and logs the event)."""
        await self._send(
            "DELETE", f"{self._base}/v1/assetmetadata/{_seg(guid)}", what=f"delete asset {guid}"
        )

    async def set_status(
        self, guid: str, status: InternalStatus, *, error_message: str | None = None
    ) -> None:
        """Set the internal status by hand (ASSET_RECEIVED, ERDA_FAILED or ERDA_ERROR only)."""
        if status not in SETTABLE_STATUSES:
            raise ValueError(f"ARS does not accept setstatus {status}")
        params: dict[str, str] = {"newStatus": status.value}
        if error_message is not None:
            params["errorMessage"] = error_message
        await self._send(
            "PUT",
            f"{self._base}/v1/assetmetadata/{_seg(guid)}/setstatus",
            what=f"set status of {guid} to {status}",
            params=params,
        )

    async def complete_asset(self, request: AssetUpdateRequest) -> None:
        """Mark the asset completed (only when its files are in but the status lags)."""
        guid = request.minimal_asset.asset_guid
        await self._send(
            "POST",
            f"{self._base}/v1/assetmetadata/{_seg(guid)}/complete",
            what=f"complete asset {guid}",
            json=request.to_wire(),
        )

    async def unlock_asset(self, guid: str) -> None:
        await self._send(
            "PUT", f"{self._base}/v1/assetmetadata/{_seg(guid)}/unlock", what=f"unlock {guid}"
        )

    async def asset_status(self, guid: str) -> AssetStatusInfo:
        """Internal status, error and share size: how the ERDA sync is observed."""
        found = await self._get_found(f"{self._base}/v1/assets/status/{_seg(guid)}",
                                      what=f"status of {guid}")
        return AssetStatusInfo.model_validate(found.json())

    async def events(self, guid: str) -> list[Event]:
        response = await self._send(
            "GET", f"{self._base}/v1/assetmetadata/{_seg(guid)}/events", what=f"events of {guid}"
        )
        if not response.content:
            return []
        body = response.json()
        # The contract declares one Event but describes a list; accept both.
        items = body if isinstance(body, list) else [body]
        return [Event.model_validate(item) for item in items]

    # ---------------------------------------------------------------- file proxy

    async def create_share(
        self, asset: MinimalAsset, *, allocation_mb: int, users: list[str] | None = None
    ) -> HttpInfo:
        """Open a share for an asset that has none (`ArsConflict` if one is open: never two)."""
        _check_allocation(allocation_mb)
        response = await self._send(
            "POST",
            f"{self._proxy}/shares/assets/{_seg(asset.asset_guid)}/createShare",
            what=f"create share for {asset.asset_guid}",
            json={
                "assets": [asset.to_wire()],
                "users": users or [],
                "allocation_mb": allocation_mb,
            },
        )
        return HttpInfo.model_validate(response.json())

    async def delete_share(self, guid: str) -> HttpInfo:
        """Close the share; files not yet synchronised to ERDA are discarded by ARS."""
        response = await self._send(
            "DELETE",
            f"{self._proxy}/shares/assets/{_seg(guid)}/deleteShare",
            what=f"delete share of {guid}",
        )
        return HttpInfo.model_validate(response.json()) if response.content else HttpInfo()

    async def change_allocation(self, guid: str, *, new_allocation_mb: int) -> HttpInfo:
        response = await self._send(
            "POST",
            f"{self._proxy}/shares/assets/{_seg(guid)}/changeAllocation",
            what=f"change allocation of {guid} to {new_allocation_mb} MB",
            json={"asset_guid": guid, "new_allocation_mb": new_allocation_mb},
        )
        return HttpInfo.model_validate(response.json())

    async def synchronize(self, guid: str, *, workstation: str, pipeline: str) -> None:
        """Ask ARS to push the share to ERDA. Asynchronous: watch `asset_status` for
        COMPLETED (share gone) or ERDA_ERROR/ERDA_FAILED (share kept; synchronise again)."""
        await self._send(
            "POST",
            f"{self._proxy}/shares/assets/{_seg(guid)}/synchronize",
            what=f"synchronize {guid}",
            params={"workstation": workstation, "pipeline": pipeline},
        )

    def file_url(self, asset: MinimalAsset, path: str) -> str:
        """The link of one file (what HPC jobs download from with their own token)."""
        return (
            f"{self._proxy}/assetfiles/{_seg(asset.institution)}/{_seg(asset.collection)}/"
            f"{_seg(asset.asset_guid)}/{_file_path(path)}"
        )

    async def upload_file(
        self,
        asset: MinimalAsset,
        path: str,
        data: bytes,
        *,
        crc: int | None = None,
        content_type: str = "application/octet-stream",
    ) -> FileUploadResult:
        """Upload one file into the asset's open share. The CRC-32 travels as the `crc` query
        parameter with `file_size_mb`; ARS recomputes it and answers 507
        (`ArsChecksumMismatch`) on a difference. Pass `crc` when it was computed where the file
        was made (the track's `check_sum`), so corruption on the way here is caught too."""
        checksum = crc32(data) if crc is None else crc
        response = await self._send(
            "PUT",
            self.file_url(asset, path),
            what=f"upload {path} of {asset.asset_guid}",
            params={"crc": checksum, "file_size_mb": size_mb(len(data))},
            content=data,
            headers={"Content-Type": content_type},
            timeout=self.settings.transfer_timeout_s,
        )
        return FileUploadResult.model_validate(response.json())

    async def download_file(self, asset: MinimalAsset, path: str) -> bytes:
        response = await self._send(
            "GET",
            self.file_url(asset, path),
            what=f"download {path} of {asset.asset_guid}",
            timeout=self.settings.transfer_timeout_s,
        )
        return response.content

    async def list_share_files(self, asset: MinimalAsset) -> list[str]:
        """Links of the files in the asset's open share."""
        response = await self._send(
            "GET",
            f"{self._proxy}/assetfiles/{_seg(asset.institution)}/{_seg(asset.collection)}/"
            f"{_seg(asset.asset_guid)}/",
            what=f"list share files of {asset.asset_guid}",
        )
        return [str(item) for item in response.json()]

    async def list_files(self, guid: str) -> list[str]:
        """Paths (`institution/collection/guid/file`) of the asset's files in ERDA."""
        response = await self._send(
            "GET",
            f"{self._proxy}/assetfiles/listfiles/{_seg(guid)}",
            what=f"list ERDA files of {guid}",
        )
        return [str(item) for item in response.json()]

    # ---------------------------------------------------------------- transport

    def _retry_backoff(self, exc: Exception) -> bool | float:
        """stamina's backoff hook: retry what may succeed later, at the pace ARS asks for."""
        if isinstance(exc, ArsThrottled):
            if exc.retry_after is None:
                return True
            return exc.retry_after if exc.retry_after <= self.settings.retry_after_max_s else False
        return isinstance(exc, ArsUnavailable)

    async def _get_found(self, url: str, *, what: str) -> httpx.Response:
        """GET one asset's resource; `ArsNotFound` where ARS answers 204 or nothing (how its
        contract says the asset does not exist)."""
        response = await self._send("GET", url, what=what)
        if response.status_code == 204 or not response.content:
            raise ArsNotFound(f"{what}: does not exist", status=response.status_code)
        return response

    async def _send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        s = self.settings
        attempt_no = 0
        async for attempt in stamina.retry_context(
            on=self._retry_backoff,
            attempts=s.retry_attempts,
            timeout=s.retry_timeout_s,
            wait_initial=s.retry_wait_initial_s,
            wait_max=s.retry_wait_max_s,
            wait_jitter=s.retry_wait_jitter_s,
        ):
            with attempt:
                attempt_no += 1
                try:
                    response = await self._http.request(
                        method,
                        url,
                        params=params,
                        json=json,
                        content=content,
                        headers=headers,
                        auth=self._auth,
                        timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                    )
                except httpx.TransportError as exc:
                    self._count_call(method, url, "unreachable")
                    error: ArsError = ArsUnavailable(f"{what}: {type(exc).__name__}: {exc}")
                    self._log_failure(method, url, attempt_no, error)
                    raise error from exc
                if response.is_success:
                    self._count_call(method, url, "ok")
                    return response
                self._count_call(method, url, str(response.status_code))
                error = error_from_response(response, what=what)
                self._log_failure(method, url, attempt_no, error)
                raise error
        raise AssertionError("stamina.retry_context ended without a result")  # pragma: no cover

    def _count_call(self, method: str, url: str, outcome: str) -> None:
        """`dasscod_ars_calls_total`: the kind is the method and the first path segment below
        the ARS or file-proxy root (never a guid, so the label set stays small)."""
        rest = url
        for root in (self._base, self._proxy.rstrip("/")):
            if url.startswith(root):
                rest = url[len(root):]
                break
        parts = [p for p in httpx.URL(rest).path.split("/") if p and p != "v1"]
        kind = f"{method} {parts[0] if parts else ''}".strip()
        metrics.ARS_CALLS.labels(kind=kind, outcome=outcome).inc()

    @staticmethod
    def _log_failure(method: str, url: str, attempt: int, error: ArsError) -> None:
        # A refusal is news; an unavailable ARS is retried here and, if it lasts, reported once
        # by the circuit breaker's state change rather than once per attempt.
        log_fn = log.debug if isinstance(error, ArsUnavailable) else log.warning
        log_fn(
            "ars call failed",
            method=method,
            path=httpx.URL(url).path,
            attempt=attempt,
            status=error.status,
            error_code=error.error_code,
            error=error.message,
            retryable=isinstance(error, ArsUnavailable),
        )

