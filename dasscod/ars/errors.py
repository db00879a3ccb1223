"""Typed ARS errors, and the one pure function that turns an HTTP response into one.

The hierarchy answers the only question a caller has: *try again later, or not?*

- `ArsUnavailable` (connection errors, timeouts, 5xx, 429): ARS may accept the same call later.
  The client already retried within its budget; a supervisor backs off and tries again.
- `ArsRejected` (4xx): ARS understood and said no. Repeating the call changes nothing, so the
  asset needs a different call (read, unlock, resize) or a visible ERROR state.

Every error carries the HTTP status and, where ARS sent a `DaSSCoError` body, its `errorCode`
and `errorMessage`, so a log line or a track's `last_error` says what ARS said.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx


class ArsError(Exception):
    """Any failure of an ARS call."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code
        self.body = body

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        code = f", {self.error_code}" if self.error_code else ""
        return f"{self.message} (HTTP {self.status}{code})"


class ArsUnavailable(ArsError):
    """ARS could not answer now (network, timeout, 5xx, throttled): worth trying again later."""


class ArsThrottled(ArsUnavailable):
    """HTTP 429. `retry_after` is the server's wish in seconds, when it said one."""

    def __init__(self, message: str, *, retry_after: float | None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ArsRejected(ArsError):
    """ARS refused the call (4xx): repeating it unchanged will not help."""


class ArsBadRequest(ArsRejected):
    """400: invalid body, missing fields, closed share, allocation exceeded, locked asset."""


class ArsAuthError(ArsRejected):
    """The token endpoint refused our client credentials, or ARS refused a fresh token."""


class ArsForbidden(ArsRejected):
    """403: our service account lacks the role or the access to this asset."""


class ArsNotFound(ArsRejected):
    """404, or 204 on a read (the contract's way of saying the guid does not exist)."""


class ArsConflict(ArsRejected):
    """409: the call contradicts ARS's state, e.g. a second share for one asset."""


class ArsChecksumMismatch(ArsRejected):
    """507 on upload: the CRC-32 ARS computed differs from ours; the file was not stored."""

    def __init__(self, message: str, *, expected: int, actual: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.expected = expected
        self.actual = actual


_BY_STATUS: dict[int, type[ArsRejected]] = {
    400: ArsBadRequest,
    401: ArsAuthError,
    403: ArsForbidden,
    404: ArsNotFound,
    409: ArsConflict,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _decode(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text or None


def error_from_response(response: httpx.Response, *, what: str) -> ArsError:
    """Map a non-success response to a typed error. Pure: reads the response, no I/O.

    `what` names the call ("create asset NHMD-1") so the message stands alone in a log line.
    Bodies are a `DaSSCoError` (asset service), an `HttpInfo` (share calls report failures in
    `allocation_status_text`), a `FileUploadResult` (507) or nothing at all (401 from the gateway).
    """
    status = response.status_code
    body = _decode(response)
    code: str | None = None
    detail: str | None = None
    if isinstance(body, dict):
        code = body.get("errorCode") or body.get("http_allocation_status") or body.get("error")
        detail = (
            body.get("errorMessage")
            or body.get("allocation_status_text")
            or body.get("error_description")
        )
    elif isinstance(body, str):
        detail = body[:500]
    message = f"{what}: {detail}" if detail else f"{what}: HTTP {status}"
    common: dict[str, Any] = {"status": status, "error_code": code, "body": body}

    if status == 507 and isinstance(body, dict) and "expectedCRC" in body:
        expected, actual = int(body["expectedCRC"]), int(body["actualCRC"])
        return ArsChecksumMismatch(
            f"{what}: checksum mismatch (sent CRC-32 {expected}, ARS computed {actual})",
            expected=expected,
            actual=actual,
            **common,
        )
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return ArsThrottled(message, retry_after=retry_after, **common)
    if status >= 500:
        return ArsUnavailable(message, **common)
    if status == 204:
        return ArsNotFound(f"{what}: does not exist", **common)
    return _BY_STATUS.get(status, ArsRejected)(message, **common)
