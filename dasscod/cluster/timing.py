"""Every command a transport runs is timed into `dasscod_scheduler_command_seconds`, and one
that could not be run at all counts in `dasscod_scheduler_errors_total`."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import PurePosixPath

from dasscod import metrics
from dasscod.cluster.base import CommandResult, TransportError


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


class TimedTransport:
    """A transport's `run`, timed: the local and SSH transports write only `_run`."""

    name: str

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        with timed_command(self.name, argv):
            return await self._run(argv, stdin=stdin, timeout=timeout, env=env)

    async def _run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None,
        timeout: float,
        env: Mapping[str, str] | None,
    ) -> CommandResult:
        raise NotImplementedError
