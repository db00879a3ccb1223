"""The pure parts: response-to-error mapping, Retry-After, CRC-32 and size rules, wire shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from dasscod.ars import (
    ArsAuthError,
    ArsBadRequest,
    ArsChecksumMismatch,
    ArsConflict,
    ArsForbidden,
    ArsNotFound,
    ArsRejected,
    ArsThrottled,
    ArsUnavailable,
    Asset,
    crc32,
    size_mb,
)
from dasscod.ars.errors import error_from_response, parse_retry_after


def _response(
    status: int, body: object = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    if body is None:
        return httpx.Response(status, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


def _dassco(code: str, message: str) -> dict[str, str]:
    return {"type": "Error", "protocolVersion": "1.0", "errorCode": code, "errorMessage": message}


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ArsBadRequest),
        (401, ArsAuthError),
        (403, ArsForbidden),
        (404, ArsNotFound),
        (409, ArsConflict),
        (422, ArsRejected),
        (500, ArsUnavailable),
        (502, ArsUnavailable),
        (503, ArsUnavailable),
    ],
)
def test_status_maps_to_a_typed_error(status: int, kind: type[Exception]) -> None:
    error = error_from_response(_response(status, _dassco("BAD_REQUEST", "nope")), what="x")
    assert type(error) is kind
    assert error.status == status
    assert error.error_code == "BAD_REQUEST"
    assert error.message == "x: nope"
    assert str(error) == f"x: nope (HTTP {status}, BAD_REQUEST)"


def test_retryable_and_rejected_do_not_overlap() -> None:
    assert not issubclass(ArsUnavailable, ArsRejected)
    assert issubclass(ArsThrottled, ArsUnavailable)
    assert issubclass(ArsChecksumMismatch, ArsRejected)


def test_checksum_mismatch_carries_both_sums() -> None:
    error = error_from_response(_response(507, {"expectedCRC": 1, "actualCRC": 2}), what="up")
    assert isinstance(error, ArsChecksumMismatch)
    assert (error.expected, error.actual) == (1, 2)


def test_share_errors_use_the_http_info_text() -> None:
    body = {"http_allocation_status": "SHARE_NOT_FOUND", "allocation_status_text": "no share"}
    error = error_from_response(_response(404, body), what="delete share")
    assert isinstance(error, ArsNotFound)
    assert error.error_code == "SHARE_NOT_FOUND"
    assert error.message == "delete share: no share"


def test_empty_and_text_bodies() -> None:
    assert error_from_response(_response(401), what="x").message == "x: HTTP 401"
    text = httpx.Response(502, text="<html>Bad gateway</html>")
    assert "Bad gateway" in error_from_response(text, what="x").message


def test_throttled_reads_retry_after() -> None:
    error = error_from_response(_response(429, {}, {"Retry-After": "7"}), what="x")
    assert isinstance(error, ArsThrottled)
    assert error.retry_after == 7


def test_retry_after_forms() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("-3") == 0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    value = parse_retry_after(later)
    assert value is not None and 25 < value <= 30


def test_crc32_is_unsigned_and_sizes_round_up() -> None:
    assert crc32(b"\xff" * 4) == 0xFFFFFFFF
    assert crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value
    assert size_mb(0) == 1
    assert size_mb(1_000_000) == 1
    assert size_mb(1_000_001) == 2


def test_asset_wire_names_and_update_requirements() -> None:
    asset = Asset(asset_guid="g", update_user="me", institution="NHMD")
    wire = asset.to_wire()
    assert wire == {"asset_guid": "g", "updateUser": "me", "institution": "NHMD"}
    assert asset.missing_for_update() == ["workstation", "pipeline", "collection", "status"]
    read = Asset.model_validate({"asset_guid": "g", "httpInfo": {"path": "/p"}, "new_field": 1})
    assert read.http_info is not None and read.http_info.path == "/p"
    assert read.to_wire()["new_field"] == 1  # unknown fields survive a read-modify-write
