"""Errors that recur for one thing (an asset) and one cause, logged with back-off.

A supervisor that meets the same unexpected error for the same asset on every pass used to log
a traceback each time (a flood that hides everything else) and, worse, tried that asset first
every time. Here the first failure of a cause is logged with its traceback; the thing is then
left alone for a back-off that doubles with each failure in a row (`base_s` up to `max_s`),
and each later failure, which can only come after a back-off, is one line with its count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dasscod.log import get_logger

log = get_logger(__name__)


@dataclass
class _Failing:
    cause: str
    count: int
    until: float


class RepeatedErrors:
    def __init__(self, *, base_s: float = 10.0, max_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self._clock = clock
        self._failing: dict[str, _Failing] = {}

    def due(self, key: str) -> bool:
        """Whether `key` may be tried now (it is not backing off)."""
        entry = self._failing.get(key)
        return entry is None or self._clock() >= entry.until

    def failed(self, key: str, exc: BaseException, event: str, **fields: Any) -> float:
        """Record a failure of `key` and log it as the back-off allows; returns the back-off
        in seconds."""
        cause = f"{type(exc).__name__}: {str(exc)[:200]}"
        entry = self._failing.get(key)
        count = entry.count + 1 if entry is not None and entry.cause == cause else 1
        pause = min(self.max_s, self.base_s * float(2 ** (count - 1)))
        self._failing[key] = _Failing(cause, count, self._clock() + pause)
        if count == 1:
            log.error(event, exc_info=exc, retry_in_s=pause, **fields)
        else:
            log.warning(event + " (again)", error=cause, failures=count, retry_in_s=pause,
                        **fields)
        return pause

    def cleared(self, key: str) -> None:
        """`key` worked: its next failure is news again."""
        self._failing.pop(key, None)

    def __len__(self) -> int:
        return len(self._failing)
