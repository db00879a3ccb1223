"""Every command a transport runs is timed into `dasscod_scheduler_command_seconds`, and one
that could not be run at all counts in `dasscod_scheduler_errors_total`."""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import PurePosixPath

from dasscod import metrics
from dasscod.cluster.base import Command, CommandResult, Transport, TransportError


def command_label(argv: Sequence[str]) -> str:
    """The program's name (`sbatch`, `squeue`, `sh`), never its arguments (which name jobs
    and assets and would make the label set grow without bound)."""
    return PurePosixPath(argv[0]).name if argv else ""


@contextmanager
def timed_command(cluster: str, argv: Sequence[str]) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    except TransportError:
        metrics.SCHEDULER_ERRORS.labels(cluster=cluster).inc()
        raise
    finally:
        metrics.SCHEDULER_COMMAND_SECONDS.labels(
            cluster=cluster, command=command_label(argv)
        ).observe(time.monotonic() - started)


class TimedTransport(Transport):
    """A transport whose commands are timed: the local and SSH transports write only `_run`."""

    async def execute(self, command: Command) -> CommandResult:
        with timed_command(self.name, command.argv):
            return await self._run(command)

    @abstractmethod
    async def _run(self, command: Command) -> CommandResult: ...
