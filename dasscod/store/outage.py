"""A MongoDB outage told once: one warning when it starts, one info line when it ends.

Every part of the daemon meets the same outage at about the same time; without this each
would log its own error (with a traceback) on every retry."""

from __future__ import annotations

import time

from dasscod.log import get_logger

log = get_logger(__name__)


class OutageLog:
    def __init__(self) -> None:
        self._since: float | None = None

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def began(self, error: str) -> None:
        """MongoDB could not be reached (`error`: why); logged only for the first report."""
        if self._since is None:
            self._since = time.monotonic()
            log.warning("MongoDB unreachable; waiting for it to come back", error=error)

    def ended(self) -> None:
        """MongoDB answered again."""
        if self._since is not None:
            log.info("MongoDB reachable again", outage_s=round(time.monotonic() - self._since, 1))
            self._since = None
