"""The direct scheduler: submission, lookup, status and cancel of jobs run as detached
processes on this machine (see the package docstring)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import TypeVar, TypeVarTuple

import anyio
import anyio.to_thread
import psutil

from dasscod.cluster.base import (
    JobInfo,
    JobSpec,
    SchedulerError,
    SchedulerState,
    Transport,
    TransportError,
)
from dasscod.cluster.direct.folder import (
    KILL_AFTER_S,
    NAME,
    Claim,
    JobFolder,
    alive,
    cancel_job,
    inspect_folder,
    parse_pid,
)
from dasscod.cluster.direct.warm import WARM_LOG, WARM_MODULES, WARM_NAME, WarmLauncher
from dasscod.cluster.local import LocalTransport
from dasscod.cluster.timing import timed_command

#: How long submit waits for the wrapper to record its pid before giving the launch up.
SUBMIT_WAIT_S = 10.0
#: How long submit still waits once the launched process has died without recording a pid
#: (`setsid` forks when started as a group leader: then what died was only its parent).
LAUNCH_GRACE_S = 1.0
#: The launch command only forks the wrapper, so it returns at once.
LAUNCH_TIMEOUT_S = 30.0

#: $0 of the wrapper shell: how cancel() recognises the wrapper among all processes.
WRAPPER_NAME = "dasscod-direct-job"
#: The detached wrapper (wrapper.sh), run as
#: `sh -c WRAPPER dasscod-direct-job STATE LIMIT KILL_AFTER WORKDIR ARGV...`.
WRAPPER = resources.files("dasscod.cluster.direct").joinpath("wrapper.sh").read_text()
#: Starts the wrapper in a session of its own and prints its pid (launch.sh), run as
#: `sh -c LAUNCHER dasscod-direct-launch WRAPPER_NAME WRAPPER STATE LIMIT KILL_AFTER ...`.
LAUNCHER = resources.files("dasscod.cluster.direct").joinpath("launch.sh").read_text()

T = TypeVar("T")
Args = TypeVarTuple("Args")


class DirectScheduler:
    """Jobs as detached processes on this machine, tracked through their state folders.

    Launching goes through the transport, so the command path has the same shape as a batch
    system's; reading the state folders and the process table is done locally, which is right
    by definition: "direct" runs on the daemon's machine."""

    kind = "direct"
    #: A job's state folder exists before its launch starts, so lookup never misses a launch
    #: under way (and a launch past its timeout was killed): no reason to wait.
    submit_timeout_s = 0.0

    def __init__(
        self,
        transport: Transport,
        *,
        state_dir: PurePosixPath,
        warm: Mapping[str, Sequence[str]] = WARM_MODULES,
    ) -> None:
        self.transport = transport
        self.state_dir = Path(str(state_dir))
        #: Submissions under way in this instance, by name: their launches are not abandoned.
        self._launching: Counter[str] = Counter()
        #: Only for commands on this machine, and closed with their transport.
        self._warm: WarmLauncher | None = None
        if warm and isinstance(transport, LocalTransport):
            self._warm = WarmLauncher(warm, self.state_dir / WARM_LOG)
            transport.on_close(self._warm.aclose)

    @property
    def warm(self) -> WarmLauncher | None:
        """The warm launcher, when this scheduler's jobs may start warm."""
        return self._warm

    async def submit(self, spec: JobSpec) -> str:
        _check(spec)
        folder = JobFolder(self.state_dir / spec.name)
        self._launching[spec.name] += 1  # before the folder exists: no window for lookup
        try:
            if await self._local(folder.create, spec):
                return await self._launch(folder, spec)
            return await self._resume(folder, spec.name)
        finally:
            self._launching -= Counter({spec.name: 1})

    async def lookup(self, names: Iterable[str]) -> dict[str, JobInfo]:
        return await self._local(self._lookup, list(names), frozenset(self._launching))

    async def status(self, jobs: Mapping[str, str]) -> dict[str, JobInfo]:
        return await self._local(self._status, dict(jobs), frozenset(self._launching))

    async def ours(self) -> list[JobInfo] | None:
        """Not needed: a launch on this machine either started its job folder or did not,
        and lookup reads the folders."""
        return None

    async def cancel(self, job_id: str) -> None:
        """Mark the job cancelled, then SIGTERM the wrapper's process group: the wrapper
        forwards it to the job, which gets `KILL_AFTER_S` to report before a SIGKILL. A job
        that is not running (any more) is left alone without error."""
        pid = parse_pid(job_id)
        folder = await self._local(self._folder_of_wrapper, pid) if pid else None
        if pid and folder:
            await self._local(cancel_job, folder, pid)

    # -- submission

    async def _launch(self, folder: JobFolder, spec: JobSpec) -> str:
        claim: Claim = None
        problem = f"its wrapper recorded no pid within {SUBMIT_WAIT_S:g} s"
        # A failed warm launch falls back to the shell wrapper. Should the warm wrapper have
        # started after all (its answer lost), the shell wrapper's claim fails and it exits.
        warm = None
        if self._warm is not None:
            with timed_command(self.transport.name, ["warm-launch"]):
                warm = await self._warm.launch(folder.path, spec)
        if warm is not None:
            claim = await self._await_claim(folder, warm)
        else:
            result = await self.transport.run(
                self._launch_argv(folder, spec), env=spec.env, timeout=LAUNCH_TIMEOUT_S
            )
            if result.exit_status == 0:
                claim = await self._await_claim(folder, parse_pid(result.stdout.strip()))
            else:
                problem = f"the launch command exited with status {result.exit_status}: " + (
                    result.stderr.strip()[-500:] or "no message"
                )
        if claim is None:
            claim = await self._local(folder.settle)
        if isinstance(claim, int):
            return str(claim)
        log = await self._local(folder.wrapper_log)
        raise SchedulerError(
            f"{spec.name}: the job did not start: {problem}; gave the launch up, nothing runs"
            + (f"; {folder.path / 'wrapper.log'}: {log}" if log else ""),
            retryable=True,
        )

    async def _resume(self, folder: JobFolder, name: str) -> str:
        """The folder exists, so this attempt was submitted before: report that job, never
        start another. See the module docstring for why an unclaimed folder is an error."""
        claim = await self._local(folder.claim)
        if claim is None and self._launching[name] > 1:  # a concurrent submit is launching it
            claim = await self._await_claim(folder, None)
        if claim is None:
            claim = await self._local(folder.settle)
        if isinstance(claim, int):
            return str(claim)
        raise SchedulerError(
            f"{name}: already submitted, but no job was ever started from its state folder "
            f"{folder.path} (the earlier submission was interrupted); it will not be started "
            "again under this name -- check the store against the state folders",
            retryable=False,
        )

    async def _await_claim(self, folder: JobFolder, launched: int | None) -> Claim:
        """Poll for the wrapper's pid file until it appears or `SUBMIT_WAIT_S` pass -- or,
        to fail fast when the wrapper cannot start, until `LAUNCH_GRACE_S` after the launched
        process (normally the wrapper itself) died without writing it."""
        deadline = anyio.current_time() + SUBMIT_WAIT_S
        delay = 0.005
        while True:
            claim = await self._local(folder.claim)
            now = anyio.current_time()
            if claim is not None or now >= deadline:
                return claim
            if launched is not None and not alive(launched, None):
                deadline = min(deadline, now + LAUNCH_GRACE_S)
                launched = None
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _launch_argv(self, folder: JobFolder, spec: JobSpec) -> list[str]:
        return [
            "sh", "-c", LAUNCHER, "dasscod-direct-launch", WRAPPER_NAME, WRAPPER,
            str(folder.path), str(spec.time_limit_s), str(KILL_AFTER_S), str(spec.workdir),
            *spec.argv,
        ]  # fmt: skip

    # -- queries (run in a worker thread: file system and process table)

    def _lookup(self, names: list[str], launching: frozenset[str]) -> dict[str, JobInfo]:
        found: dict[str, JobInfo] = {}
        for name in names:
            folder = self._folder(name)
            if folder is not None:
                found[name] = inspect_folder(folder, name, launching=name in launching)
        return found

    def _status(self, jobs: dict[str, str], launching: frozenset[str]) -> dict[str, JobInfo]:
        infos: dict[str, JobInfo] = {}
        for job_id, name in jobs.items():
            folder = self._folder(name)
            if folder is None:
                infos[job_id] = JobInfo(job_id, name, SchedulerState.UNKNOWN,
                                        reason=f"no state folder for {name}")
                continue
            info = inspect_folder(folder, name, launching=name in launching)
            if info.job_id != job_id:
                info = JobInfo(job_id, name, SchedulerState.UNKNOWN,
                               reason=f"{folder.path} belongs to job {info.job_id or '(none)'}")
            infos[job_id] = info
        return infos

    def _folder(self, name: str) -> JobFolder | None:
        """The state folder of a job name, if there is one (a name that cannot be a folder
        name is simply unknown)."""
        if not NAME.fullmatch(name):
            return None
        path = self.state_dir / name
        return JobFolder(path) if path.is_dir() else None

    def _folder_of_wrapper(self, pid: int) -> JobFolder | None:
        """The state folder of the live wrapper with this pid, or None when no such wrapper
        runs. The process must be one of our wrappers (a shell wrapper's argv names its
        folder, a warm one's working directory is its folder) and match the folder's pid and
        start time, so a reused pid is never signalled."""
        try:
            process = psutil.Process(pid)
            argv = process.cmdline()
            if len(argv) >= 5 and argv[1] == "-c" and argv[3] == WRAPPER_NAME:
                path = Path(argv[4])
            elif len(argv) >= 4 and argv[1] == "-c" and argv[3] == WARM_NAME:
                path = Path(process.cwd())  # a warm wrapper works in its folder
            else:
                return None
        except psutil.Error:
            return None
        if path.parent != self.state_dir or not NAME.fullmatch(path.name):
            return None
        folder = JobFolder(path)
        return folder if folder.claim() == pid and alive(pid, folder.started()) else None

    async def _local(self, func: Callable[[*Args], T], *args: *Args) -> T:
        """Run blocking state-folder work in a thread. A state folder we cannot read or write
        makes this "cluster" unusable, which is what TransportError means."""
        try:
            return await anyio.to_thread.run_sync(func, *args)
        except OSError as exc:
            raise TransportError(f"{self.transport.name}: job state folder: {exc}") from exc





def _check(spec: JobSpec) -> None:
    if not NAME.fullmatch(spec.name):
        raise SchedulerError(
            f"job name {spec.name!r} cannot name a state folder "
            f"(letters, digits, '.', '_', '-'; not starting with '.')",
            retryable=False,
        )
    if not spec.argv:
        raise SchedulerError(f"{spec.name}: empty command", retryable=False)
    if spec.time_limit_s < 1:
        raise SchedulerError(
            f"{spec.name}: time limit {spec.time_limit_s} s; it must be at least 1 s",
            retryable=False,
        )
