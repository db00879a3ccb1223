"""One-line diagnostics on stderr (the scheduler's job log). Never given the token."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime

Logger = Callable[[str], None]


def stderr_log(message: str) -> None:
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    sys.stderr.write(f"{stamp} dassco-hpc[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


def utc_timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
