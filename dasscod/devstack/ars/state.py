"""The simulator's in-memory ARS: assets, shares, files, ERDA, tokens, and ARS's rules.

A test double of an external service, so plain dicts are the right store. Rules mirror what
ARS does and what the current system learned the hard way: one share per asset, uploads only
into an open share and within its allocation, CRC-32 checked on arrival, ERDA sync
asynchronous and fallible, locked assets refuse updates. Every refusal is a `SimError` carrying
the status and body ARS would send; the app turns it into a response.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

CREATE_REQUIRED = ("asset_pid", "asset_guid", "status", "institution", "collection", "digitiser")
UPDATE_REQUIRED = ("institution", "workstation", "pipeline", "collection", "status", "updateUser")
SETTABLE = frozenset({"ASSET_RECEIVED", "ERDA_FAILED", "ERDA_ERROR"})


class SimError(Exception):
    """A refusal: HTTP status plus the body ARS sends (a DaSSCoError unless given)."""

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body if body is not None else dassco_error(code, message)


def dassco_error(code: str, message: str) -> dict[str, Any]:
    return {"type": "Error", "protocolVersion": "1.0", "errorCode": code, "errorMessage": message}


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class SimFile:
    data: bytes
    crc: int
    synced: bool = False  # in ERDA


@dataclass
class SimShare:
    allocation_mb: int
    writeable: bool = True  # False while an ERDA sync runs


@dataclass
class ErdaSettings:
    #: Seconds from `synchronize` to COMPLETED (or ERDA_ERROR).
    delay_s: float = 0.05
    #: The next N synchronisations fail with ERDA_ERROR.
    fail_next: int = 0
    #: Synchronisations of these guids always fail.
    fail_guids: set[str] = field(default_factory=set)
    #: Synchronisations of these guids never finish (status stays ASSET_RECEIVED).
    stall_guids: set[str] = field(default_factory=set)
    #: Synchronisations of these guids copy the files to ERDA and close the share, but the
    #: status is never updated (stays ASSET_RECEIVED): what `complete` exists for.
    lag_guids: set[str] = field(default_factory=set)


@dataclass
class SimState:
    #: Client credentials the token endpoint accepts.
    clients: dict[str, str] = field(default_factory=dict)
    token_ttl_s: float = 300.0
    #: Disk of the simulated file proxy.
    total_storage_mb: int = 90_000
    cache_storage_mb: int = 20_000
    hostname: str = "http://127.0.0.1/file_proxy/api"
    erda: ErdaSettings = field(default_factory=ErdaSettings)
    #: Guids our service account may not touch (403).
    forbidden_guids: set[str] = field(default_factory=set)

    assets: dict[str, dict[str, Any]] = field(default_factory=dict)
    shares: dict[str, SimShare] = field(default_factory=dict)
    files: dict[str, dict[str, SimFile]] = field(default_factory=dict)  # guid -> path -> file
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (monotonic)
    tokens_issued: int = 0
    #: High-water marks, for tests of the daemon's throttles: ERDA syncs under way at once,
    #: MB allocated to open shares at once.
    peak_syncing: int = 0
    peak_allocated_mb: int = 0
    _pending: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    _stalled: set[str] = field(default_factory=set)  # syncs that will never finish

    def clear(self, *, token_ttl_s: float, erda_delay_s: float) -> None:
        """Forget every asset, share, file and token; restore the knobs (tests reuse one
        running simulator rather than paying a server start and stop each)."""
        self.cancel_pending()
        self._stalled.clear()
        self.assets.clear()
        self.shares.clear()
        self.files.clear()
        self.tokens.clear()
        self.tokens_issued = 0
        self.peak_syncing = 0
        self.peak_allocated_mb = 0
        self.forbidden_guids.clear()
        self.token_ttl_s = token_ttl_s
        self.erda = ErdaSettings(delay_s=erda_delay_s)

    # ------------------------------------------------------------------ tokens

    def issue_token(self, client_id: str, client_secret: str) -> dict[str, Any]:
        if not client_id or self.clients.get(client_id) != client_secret:
            raise SimError(
                401,
                "invalid_client",
                "Invalid client or Invalid client credentials",
                body={
                    "error": "unauthorized_client",
                    "error_description": "Invalid client or Invalid client credentials",
                },
            )
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.monotonic() + self.token_ttl_s
        self.tokens_issued += 1
        return {
            "access_token": token,
            "expires_in": self.token_ttl_s,
            "token_type": "Bearer",
            "scope": "profile email",
        }

    def token_valid(self, token: str) -> bool:
        expiry = self.tokens.get(token)
        return expiry is not None and time.monotonic() < expiry

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    # ------------------------------------------------------------------ assets

    def _asset(self, guid: str) -> dict[str, Any]:
        if guid in self.forbidden_guids:
            raise SimError(403, "FORBIDDEN", f"User does not have access to asset {guid}")
        asset = self.assets.get(guid)
        if asset is None:
            raise SimError(404, "NOT_FOUND", f"Asset {guid} does not exist")
        return asset

    def get_asset(self, guid: str) -> dict[str, Any] | None:
        """None for an unknown guid: the contract answers 204, not 404."""
        if guid not in self.assets:
            return None
        return self._view(self._asset(guid))

    def _event(self, asset: dict[str, Any], event: str, user: str | None) -> None:
        asset["events"].append(
            {
                "user": user,
                "timeStamp": now_iso(),
                "event": event,
                "pipeline": asset.get("pipeline"),
                "workstation": asset.get("workstation"),
            }
        )

    def _used_bytes(self, guid: str, excluding: str | None = None) -> int:
        return sum(len(f.data) for p, f in self.files.get(guid, {}).items() if p != excluding)

    def _allocated_mb(self) -> int:
        return sum(s.allocation_mb for s in self.shares.values())

    def http_info(
        self, guid: str, status: str = "SUCCESS", text: str | None = None
    ) -> dict[str, Any]:
        asset = self.assets.get(guid, {})
        share = self.shares.get(guid)
        return {
            "path": f"/assetfiles/{asset.get('institution')}/{asset.get('collection')}/{guid}/",
            "hostname": self.hostname,
            "total_storage_mb": self.total_storage_mb,
            "cache_storage_mb": self.cache_storage_mb,
            "remaining_storage_mb": self.total_storage_mb
            - self.cache_storage_mb
            - self._allocated_mb(),
            "allocated_storage_mb": share.allocation_mb if share else 0,
            "allocation_status_text": text,
            "http_allocation_status": status,
        }

    def _view(self, asset: dict[str, Any]) -> dict[str, Any]:
        view = {k: v for k, v in asset.items() if not k.startswith("_")}
        view["httpInfo"] = self.http_info(asset["asset_guid"])
        return view

    def create_asset(self, body: dict[str, Any], allocation_mb: int | None) -> dict[str, Any]:
        missing = [k for k in CREATE_REQUIRED if not body.get(k)]
        if missing:
            raise SimError(400, "BAD_REQUEST", f"Missing required fields: {', '.join(missing)}")
        guid = str(body["asset_guid"])
        if guid in self.assets:
            raise SimError(400, "BAD_REQUEST", f"Asset {guid} already exists")
        parent = body.get("parent_guid")
        if parent:
            if parent not in self.assets:
                raise SimError(400, "BAD_REQUEST", f"Parent {parent} does not exist")
            if not self.files.get(parent):
                raise SimError(400, "BAD_REQUEST", f"Parent {parent} has no file uploaded")
        asset = dict(body)
        asset.update(
            internal_status="METADATA_RECEIVED",
            created_date=now_iso(),
            date_metadata_updated=now_iso(),
            asset_locked=bool(body.get("asset_locked", False)),
            events=[],
        )
        self.assets[guid] = asset
        self.files[guid] = {}
        self._event(asset, "CREATE_ASSET_METADATA", body.get("updateUser"))
        status, text = "SUCCESS", None
        if allocation_mb:
            try:
                self._open_share(guid, allocation_mb)
            except SimError as exc:
                status, text = "DISK_FULL", str(exc)
        view = self._view(asset)
        view["httpInfo"] = self.http_info(guid, status, text)
        return view

    def update_asset(self, guid: str, body: dict[str, Any]) -> dict[str, Any]:
        asset = self._asset(guid)
        missing = [k for k in UPDATE_REQUIRED if not body.get(k)]
        if missing:
            raise SimError(400, "BAD_REQUEST", f"Missing required fields: {', '.join(missing)}")
        if asset["asset_locked"]:
            raise SimError(400, "BAD_REQUEST", f"Asset {guid} is locked")
        kept = {k: asset[k] for k in ("internal_status", "created_date", "events", "asset_guid")}
        asset.clear()
        asset.update(body)
        asset.update(kept)
        asset["asset_locked"] = bool(body.get("asset_locked", False))  # can lock, not unlock
        asset["date_metadata_updated"] = now_iso()
        self._event(asset, "UPDATE_ASSET_METADATA", body.get("updateUser"))
        return self._view(asset)

    def delete_asset(self, guid: str) -> None:
        asset = self._asset(guid)
        asset["date_asset_deleted"] = now_iso()
        self._event(asset, "DELETE_ASSET_METADATA", None)

    def set_status(self, guid: str, status: str | None, message: str | None) -> None:
        asset = self._asset(guid)
        if status not in SETTABLE:
            raise SimError(400, "BAD_REQUEST", f"Invalid status: {status}")
        asset["internal_status"] = status
        asset["error_message"] = message
        asset["error_timestamp"] = now_iso() if message else None

    def complete(self, guid: str, body: dict[str, Any]) -> None:
        asset = self._asset(guid)
        minimal = body.get("minimalAsset") or {}
        if minimal.get("asset_guid") not in (None, guid):
            raise SimError(400, "BAD_REQUEST", "Asset guid in body does not match the path")
        asset["internal_status"] = "COMPLETED"
        self._event(asset, "ASSET_FINALISED", None)

    def unlock(self, guid: str) -> None:
        self._asset(guid)["asset_locked"] = False

    def lock(self, guid: str) -> None:
        """Test handle: lock an asset as a curator would."""
        self._asset(guid)["asset_locked"] = True

    def status(self, guid: str) -> dict[str, Any]:
        asset = self._asset(guid)
        share = self.shares.get(guid)
        return {
            "asset_guid": guid,
            "parent_guid": asset.get("parent_guid"),
            "error_timestamp": asset.get("error_timestamp"),
            "status": asset["internal_status"],
            "error_message": asset.get("error_message"),
            "share_allocation_mb": share.allocation_mb if share else None,
        }

    def events(self, guid: str) -> list[dict[str, Any]]:
        return list(self._asset(guid)["events"])

    # ------------------------------------------------------------------ shares

    def _open_share(self, guid: str, allocation_mb: int) -> None:
        if allocation_mb <= 0:
            raise SimError(400, "BAD_REQUEST", "Allocation cannot be 0")
        if guid in self.shares:
            raise SimError(409, "CONFLICT", f"Asset {guid} already has an open share")
        remaining = self.total_storage_mb - self.cache_storage_mb - self._allocated_mb()
        if allocation_mb > remaining:
            raise SimError(400, "BAD_REQUEST", "Allocation failed, no more disk space")
        self.shares[guid] = SimShare(allocation_mb)
        self.peak_allocated_mb = max(self.peak_allocated_mb, self._allocated_mb())

    def create_share(self, guid: str, body: dict[str, Any]) -> dict[str, Any]:
        assets = body.get("assets") or []
        if len(assets) != 1:
            raise SimError(400, "BAD_REQUEST", "You may only checkout one asset using this API")
        if assets[0].get("asset_guid") != guid:
            raise SimError(400, "BAD_REQUEST", "Asset guid in path does not match the body")
        self._asset(guid)
        self._open_share(guid, int(body.get("allocation_mb") or 0))
        return self.http_info(guid)

    def _share_missing(self, guid: str) -> SimError:
        return SimError(
            404,
            "SHARE_NOT_FOUND",
            f"No share for {guid}",
            body=self.http_info(guid, "SHARE_NOT_FOUND", f"No share found for asset {guid}"),
        )

    def delete_share(self, guid: str) -> dict[str, Any]:
        self._asset(guid)
        if guid not in self.shares:
            raise self._share_missing(guid)
        # Files not yet in ERDA go with the share.
        self.files[guid] = {p: f for p, f in self.files[guid].items() if f.synced}
        del self.shares[guid]
        return self.http_info(guid)

    def change_allocation(self, guid: str, new_mb: int) -> dict[str, Any]:
        self._asset(guid)
        share = self.shares.get(guid)
        if share is None:
            raise self._share_missing(guid)
        if new_mb <= 0 or new_mb * 1_000_000 < self._used_bytes(guid):
            raise SimError(400, "BAD_REQUEST", "New allocation is smaller than the files")
        share.allocation_mb = new_mb
        return self.http_info(guid)

    # ------------------------------------------------------------------ files

    def _check_location(self, guid: str, institution: str, collection: str) -> dict[str, Any]:
        asset = self._asset(guid)
        if (asset.get("institution"), asset.get("collection")) != (institution, collection):
            raise SimError(404, "NOT_FOUND", f"Asset {guid} is not in {institution}/{collection}")
        return asset

    def upload(
        self,
        institution: str,
        collection: str,
        guid: str,
        path: str,
        data: bytes,
        crc: int,
        file_size_mb: int,
    ) -> tuple[int, dict[str, Any]]:
        self._check_location(guid, institution, collection)
        if file_size_mb == 0:
            raise SimError(400, "BAD_REQUEST", "file_size_mb cannot be 0")
        if crc == 0:
            raise SimError(400, "BAD_REQUEST", "crc cannot be 0")
        share = self.shares.get(guid)
        if share is None or not share.writeable:
            raise SimError(400, "BAD_REQUEST", "There is no writeable directory for this asset")
        incoming = max(file_size_mb * 1_000_000, len(data))
        if (self._used_bytes(guid, excluding=path) + incoming) / 1_000_000 > share.allocation_mb:
            raise SimError(
                400, "BAD_REQUEST", "Total size of asset files exceeds allocated disk space"
            )
        actual = zlib.crc32(data) & 0xFFFFFFFF
        if actual == crc:
            self.files[guid][path] = SimFile(data, actual)
            return 200, {"expectedCRC": crc, "actualCRC": actual}
        return 507, {"expectedCRC": crc, "actualCRC": actual}

    def download(self, institution: str, collection: str, guid: str, path: str) -> bytes:
        self._check_location(guid, institution, collection)
        found = self.files.get(guid, {}).get(path)
        if found is None:
            raise SimError(
                404, "NOT_FOUND", f"Asset file not found for assetGuid: {guid}, path: {path}"
            )
        return found.data

    def share_links(self, institution: str, collection: str, guid: str) -> list[str]:
        self._check_location(guid, institution, collection)
        if guid not in self.shares:
            return []
        base = f"{self.hostname}/assetfiles/{institution}/{collection}/{guid}"
        return [f"{base}/{p}" for p in sorted(self.files[guid])]

    def erda_files(self, guid: str) -> list[str]:
        asset = self._asset(guid)
        prefix = f"{asset['institution']}/{asset['collection']}/{guid}"
        return [f"{prefix}/{p}" for p, f in sorted(self.files[guid].items()) if f.synced]

    # ------------------------------------------------------------------ ERDA

    def synchronize(self, guid: str, workstation: str | None, pipeline: str | None) -> None:
        asset = self._asset(guid)
        share = self.shares.get(guid)
        if share is None or not share.writeable:
            raise SimError(400, "BAD_REQUEST", f"No open share to synchronize for {guid}")
        share.writeable = False
        asset["internal_status"] = "ASSET_RECEIVED"
        asset["error_message"] = None
        fail = guid in self.erda.fail_guids or self.erda.fail_next > 0
        if self.erda.fail_next > 0:
            self.erda.fail_next -= 1
        if guid in self.erda.stall_guids:
            self._stalled.add(guid)
        else:
            loop = asyncio.get_running_loop()
            self._pending[guid] = loop.call_later(
                self.erda.delay_s, self._finish_sync, guid, fail
            )
        self.peak_syncing = max(self.peak_syncing, len(self._pending) + len(self._stalled))

    def _finish_sync(self, guid: str, fail: bool) -> None:
        self._pending.pop(guid, None)
        asset = self.assets.get(guid)
        share = self.shares.get(guid)
        if asset is None or share is None:
            return
        if fail:
            asset["internal_status"] = "ERDA_ERROR"
            asset["error_message"] = "Failed to upload to ERDA: connection reset"
            asset["error_timestamp"] = now_iso()
            share.writeable = True  # the share stays; synchronise again
            return
        for f in self.files[guid].values():
            f.synced = True
        del self.shares[guid]
        if guid not in self.erda.lag_guids:
            asset["internal_status"] = "COMPLETED"

    def cancel_pending(self) -> None:
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
