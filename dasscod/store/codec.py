"""Turn pydantic models and enums into plain BSON-encodable values."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel


def to_bson(value: Any) -> Any:
    """Recursively convert models to dicts and enums to their values; leave datetimes alone
    (the driver encodes them as BSON dates, which date queries need)."""
    if isinstance(value, BaseModel):
        return to_bson(value.model_dump(by_alias=True))
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_bson(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_bson(v) for v in value]
    return value
