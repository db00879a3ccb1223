"""Bounds on what comes from outside (job callbacks, the intake API, folder deliveries), so
that anything the store could not keep is a 422 naming the problem, never a 500.

MongoDB keeps integers of 64 bits, dates between years 1 and 9999 in UTC, field names that
are not empty, do not start with `$` and hold no `.` (they would be read as operators or
paths), and documents nested at most 100 deep. A free-form document (metadata, a job's
results) is checked against tighter limits than those, with the path of what is wrong.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Nesting of a free-form document (a dict or list inside another counts one level).
MAX_DEPTH = 20
MAX_KEY_LENGTH = 200
MAX_STRING_LENGTH = 1_000_000
MAX_ITEMS = 10_000
#: A typed list in a request (barcodes, derivatives' guids): pydantic stops at the first item
#: over it, so a long list of wrong items costs one error instead of one error each (120,000
#: of them from a 240 KB body took seconds of the event loop to report).
MAX_LIST_ITEMS = 1000


def check_document(value: dict[str, Any], where: str = "") -> dict[str, Any]:
    _check(value, where or "document", 1)
    return value


def _check(value: Any, path: str, depth: int) -> None:
    if isinstance(value, dict | list) and depth > MAX_DEPTH:
        raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise ValueError(f"{path}: more than {MAX_ITEMS} fields")
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"{path}: an empty field name")
            if key.startswith("$") or "." in key or "\0" in key:
                raise ValueError(f"{path}: field name {key[:50]!r} starts with '$' or holds "
                                 "'.' or NUL (MongoDB reads those as operators or paths)")
            if len(key) > MAX_KEY_LENGTH:
                raise ValueError(f"{path}: field name longer than {MAX_KEY_LENGTH} characters")
            _check(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise ValueError(f"{path}: more than {MAX_ITEMS} items")
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"{path}: integer outside 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: not a finite number")
    elif isinstance(value, str) and len(value) > MAX_STRING_LENGTH:
        raise ValueError(f"{path}: text longer than {MAX_STRING_LENGTH} characters")


def check_moment(value: datetime) -> datetime:
    """Aware or naive (taken as UTC), and representable in UTC between years 1 and 9999."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        return aware.astimezone(UTC)
    except OverflowError:
        raise ValueError("date out of range: it must lie between years 1 and 9999 in UTC"
                         ) from None


def _document(value: dict[str, Any]) -> dict[str, Any]:
    return check_document(value)


#: A free-form JSON object the store keeps as it is.
Document = Annotated[dict[str, Any], AfterValidator(_document)]
#: A moment from outside, in UTC.
Moment = Annotated[datetime, AfterValidator(check_moment)]
#: A list of texts from outside.
Texts = Annotated[list[str], Field(max_length=MAX_LIST_ITEMS)]
