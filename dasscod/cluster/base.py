"""The interfaces every transport and scheduler implements.

A *transport* runs commands somewhere (this machine, or a login node over SSH). A *scheduler*
turns a job into commands for that transport (direct background process, Slurm, Torque) and
parses what comes back. Schedulers never touch MongoDB: the dispatcher and watcher do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Protocol, TypeVar


class TransportError(Exception):
    """The command could not be run at all (connection lost, timeout, host unreachable).

    Retrying later may help; the cluster should stop taking new jobs meanwhile."""


class SchedulerError(Exception):
    """The scheduler refused or failed a request. `retryable` says whether trying again later
    can help (a full queue can; a rejected script cannot)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Command:
    """One command for a transport: an argv list (never a shell string built from input),
    the text for its stdin, how long it may take, and `env`: variables added to (or
    overriding) the environment the command would get anyway, whose values travel out of
    band, never on the command line where `ps` shows them."""

    argv: tuple[str, ...]
    stdin: str | None = None
    timeout: float = 30.0
    env: Mapping[str, str] | None = None


class Transport(ABC):
    """Runs commands somewhere. Implementations write `execute`: they enforce the command's
    timeout and raise TransportError when they cannot run it."""

    name: str

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        return await self.execute(Command(tuple(argv), stdin=stdin, timeout=timeout, env=env))

    @abstractmethod
    async def execute(self, command: Command) -> CommandResult: ...

    async def close(self) -> None:
        """Let go of what the transport keeps between commands (connections, helpers);
        by default it keeps nothing."""
        return None


class SchedulerState(StrEnum):
    """What a scheduler says about a job, mapped from its own vocabulary."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    UNKNOWN = "UNKNOWN"

    @property
    def finished(self) -> bool:
        return self not in (SchedulerState.PENDING, SchedulerState.RUNNING, SchedulerState.UNKNOWN)


@dataclass(frozen=True)
class JobSpec:
    """Everything a scheduler needs to start one attempt of one pipeline job."""

    name: str  # deterministic per (asset, job, attempt): how we find it again after a crash
    argv: tuple[str, ...]  # the job's command, already rendered
    workdir: PurePosixPath  # on the cluster; created if missing
    env: Mapping[str, str] = field(default_factory=dict)
    time_limit_s: int = 3600
    cpus: int = 1
    memory_mb: int = 1024
    partition: str | None = None
    account: str | None = None


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    name: str
    state: SchedulerState
    exit_code: int | None = None
    reason: str | None = None


class Scheduler(Protocol):
    """A batch system (or none) reached through a transport."""

    kind: str
    #: How long one submission may take before its outcome counts as unknown (a submission
    #: still running on the cluster may yet create the job): the watcher keeps looking the
    #: job up by name at least this long before it declares the attempt unsubmitted.
    submit_timeout_s: float

    async def submit(self, spec: JobSpec) -> str:
        """Start the job and return the scheduler's job id. Raises SchedulerError/TransportError."""
        ...

    async def lookup(self, names: Iterable[str]) -> dict[str, JobInfo]:
        """Find jobs by their deterministic names, live or finished (as far as the scheduler
        still knows them), in one batched query. Names it does not know are absent."""
        ...

    async def status(self, jobs: Mapping[str, str]) -> dict[str, JobInfo]:
        """Status of the given jobs ({job_id: name}) in one batched query; a job the scheduler
        no longer knows at all is reported with state UNKNOWN."""
        ...

    async def cancel(self, job_id: str) -> None: ...

    async def ours(self) -> list[JobInfo] | None:
        """The live (pending or running) jobs this scheduler instance submitted, in one query,
        or None where it cannot tell: the watcher cancels those no live attempt accounts for
        (a late submission, a duplicate)."""
        ...


class Named(Protocol):
    @property
    def name(self) -> str: ...


R = TypeVar("R", bound=Named)


def best_by_name(
    records: Iterable[R], names: Iterable[str], rank: Callable[[R], tuple[bool, int, int]]
) -> dict[str, R]:
    """One record per wanted name, the highest `rank` (a parser's records of several jobs
    that share a name: the scheduler's memory, accounting, another user's job). Records of
    other names are dropped."""
    wanted = set(names)
    best: dict[str, R] = {}
    for record in records:
        if record.name not in wanted:
            continue
        current = best.get(record.name)
        if current is None or rank(record) > rank(current):
            best[record.name] = record
    return best
