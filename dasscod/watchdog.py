"""systemd's watchdog: `WATCHDOG=1` only while the daemon makes progress.

Two things can wedge a daemon without killing it: a blocked event loop (a synchronous call
that never returns) and a supervisor stuck on an await that never ends (a hung connection).
The pinging task runs in the event loop, so a blocked loop stops the pings by itself. For
the supervisors, each one calls `beat(within_s)` in its loop, saying when it will beat again
at the latest (its own sleep); one that has not beaten by then plus the watchdog interval (the
allowance for the work between two beats) is stuck, and the pings stop. systemd then kills
and restarts the daemon (`WatchdogSec=` in the unit; `Restart=on-failure`).

Supervisors find their `Progress` through a context variable that `Daemon.supervise` sets, so
`beat` needs no wiring through the constructors, and a task a supervisor starts beats for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar

import anyio

from dasscod import sd_notify
from dasscod.log import get_logger

log = get_logger(__name__)

#: Without a watchdog the status line is still refreshed this often.
STATUS_EVERY_S = 10.0


class Progress:
    """When each supervisor last beat, and by when it promised to beat again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._due: dict[str, float] = {}

    def beat(self, name: str, within_s: float) -> None:
        self._due[name] = self.clock() + within_s

    def forget(self, name: str) -> None:
        """A supervisor that returned (the daemon is stopping) is no longer expected."""
        self._due.pop(name, None)

    def stuck(self, allowance_s: float) -> list[str]:
        now = self.clock()
        return sorted(name for name, due in self._due.items() if now > due + allowance_s)


_current: ContextVar[tuple[Progress, str] | None] = ContextVar("dasscod_progress", default=None)


def supervised_as(progress: Progress, name: str) -> None:
    """Make `beat` in this task (and the tasks it starts) count for supervisor `name`."""
    _current.set((progress, name))


def beat(within_s: float) -> None:
    """The calling supervisor is alive and will beat again within `within_s` seconds (plus
    the time its next piece of work takes, up to the watchdog interval). Outside a
    supervisor (tests calling a loop directly) it does nothing."""
    current = _current.get()
    if current is not None:
        progress, name = current
        progress.beat(name, within_s)


class Watchdog:
    """Pings systemd every half interval while no supervisor is stuck, and keeps `STATUS=`
    current ("running N jobs")."""

    def __init__(
        self,
        progress: Progress,
        *,
        stopping: anyio.Event,
        status: Callable[[], str],
        interval_s: float | None = None,
    ) -> None:
        self.progress = progress
        self.stopping = stopping
        self.status = status
        self.interval_s = interval_s if interval_s is not None else sd_notify.watchdog_interval_s()
        self._reported: list[str] = []

    async def run(self) -> None:
        period = self.interval_s / 2 if self.interval_s else STATUS_EVERY_S
        while not self.stopping.is_set():
            self.tick()
            with anyio.move_on_after(period):
                await self.stopping.wait()

    def tick(self) -> None:
        if not self.interval_s:
            sd_notify.status(self.status())
            return
        stuck = self.progress.stuck(self.interval_s)
        if stuck != self._reported:
            if stuck:
                log.error("supervisors made no progress; the watchdog stops pinging systemd, "
                          "which restarts the daemon", supervisor=",".join(stuck),
                          watchdog_s=self.interval_s)
            else:
                log.info("every supervisor makes progress again; watchdog pings resume")
            self._reported = stuck
        if stuck:
            sd_notify.status(f"stuck: {', '.join(stuck)} made no progress")
            return
        sd_notify.notify("WATCHDOG=1", f"STATUS={self.status()}")
