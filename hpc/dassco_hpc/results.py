"""Checking what a module returned before it is sent, so that a module's mistake becomes a
reported failure instead of a callback the listener refuses."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: The listener's JobResults: every part optional.
DEFAULTS: dict[str, Any] = {
    "asset_ready": False,
    "metadata": None,
    "barcode": None,
    "clean_up": False,
    "derivatives": [],
}
ASSET_SUBJECTS = ("specimen", "label", "device target")
BARCODE_FIELDS = {"barcodes", "asset_subject", "MSO", "MOS", "label", "disposable"}


class InvalidResults(ValueError):
    pass


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidResults(f"{name} must be true or false, not {value!r}")
    return value


def _strings(name: str, value: Any) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidResults(f"{name} must be a list of strings, not {value!r}")
    return list(value)


def _barcode(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidResults(f"barcode must be an object, not {value!r}")
    unknown = sorted(set(value) - BARCODE_FIELDS)
    if unknown:
        raise InvalidResults(f"unknown barcode fields: {', '.join(map(str, unknown))}")
    if value.get("asset_subject") not in ASSET_SUBJECTS:
        raise InvalidResults(
            f"barcode.asset_subject must be one of {', '.join(ASSET_SUBJECTS)}, "
            f"not {value.get('asset_subject')!r}"
        )
    out: dict[str, Any] = {"asset_subject": value["asset_subject"]}
    out["barcodes"] = _strings("barcode.barcodes", value.get("barcodes", []))
    for flag in ("MSO", "MOS", "label"):
        out[flag] = _bool(f"barcode.{flag}", value.get(flag, False))
    disposable = value.get("disposable")
    if disposable is not None and not isinstance(disposable, str):
        raise InvalidResults(f"barcode.disposable must be a string or null, not {disposable!r}")
    out["disposable"] = disposable
    return out


def normalise(value: Any) -> dict[str, Any]:
    """The complete results object for `/jobs/finished`; None counts as no results."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise InvalidResults(f"expected a dict of results, got {type(value).__name__}")
    unknown = sorted(str(k) for k in set(value) - set(DEFAULTS))
    if unknown:
        raise InvalidResults(
            f"unknown result fields: {', '.join(unknown)} (known: {', '.join(DEFAULTS)})"
        )
    out = {**DEFAULTS, **value}
    out["asset_ready"] = _bool("asset_ready", out["asset_ready"])
    out["clean_up"] = _bool("clean_up", out["clean_up"])
    metadata = out["metadata"]
    if metadata is not None and (
        not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata)
    ):
        raise InvalidResults(f"metadata must be an object or null, not {metadata!r}")
    out["metadata"] = None if metadata is None else dict(metadata)
    out["barcode"] = _barcode(out["barcode"])
    out["derivatives"] = _strings("derivatives", out["derivatives"])
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidResults(f"results are not JSON: {exc}") from None
    return out
