"""The "direct" scheduler: every job a detached background process on the daemon's machine.

There is no batch system to remember jobs for us, so each job keeps its state in a folder of
its own, ``<state_dir>/<job name>/``. The name is deterministic per attempt, so the folder is
how a restarted daemon finds the job again::

    spec.json      what was submitted, for operators (environment *names* only: values hold a token)
    wrapper.log    the wrapper's own messages (problems starting the job)
    started        when the wrapper started, epoch seconds (tells our wrapper from a reused pid)
    pid            the wrapper's pid -- the job id, and its session and process group -- or
                   "abandoned" when the daemon gave up a launch that never started
    stdout, stderr the job's output
    exit           the job's exit status, written atomically (exit.tmp, then a rename)
    cancelled      marker: cancel() was asked for

Crash safety. The exclusive creation of the folder is the record that the attempt was
submitted: whatever happens later, a second submit of the name never starts a second process.
A crash can still leave a folder without a running job (the daemon died between creating it
and launching). The wrapper therefore *claims* the folder by hard-linking its pid file into
place, and the daemon gives up a launch that never claimed it by linking an "abandoned" pid
file into the same place; link(2) fails when the name exists, so exactly one of the two wins.
A launch is thus either running or provably never going to run -- a wrapper that is merely
slow can never start a job the daemon has already reported as not started.

The daemon abandons a launch when submit's wrapper does not claim the folder in time (the
submission fails, retryably: nothing runs, a new attempt is safe), and when lookup or status
meets an unclaimed folder that this scheduler is not launching right now (its submitter has
crashed): the job is reported FAILED, so the watcher retries it as a new attempt under a
fresh name. Because lookup reports such folders, the store never gives their attempt back,
and a later submit of the same name means the store and the state folders disagree (or two
daemons share a state_dir): that submit abandons the folder and raises a non-retryable
SchedulerError, stopping the job for an operator instead of guessing.

Warm start. A pipeline job is `PYTHON -m dassco_hpc run MODULE`, and a fresh interpreter
spends ~70 ms importing the runner and its HTTP client before the module starts -- most of a
short job's overhead on the daemon's own machine. So a job whose command is `PYTHON -m M ...`
for a module M in `warm` is forked from a *warm launcher*: one Python per scheduler, started
on first use with the job's interpreter and environment, that has imported what M needs and
forks on request. The fork (see `WARM_SERVER`) does what the shell wrapper does -- a session
of its own, the same claim by link(2), the same state files, the time limit with a kill
after `KILL_AFTER_S`, SIGTERM forwarded -- and then runs the module as `python -m` would, in
a child of its own process group. Its parent exits at once, so the job belongs to no
process of the daemon's: it survives the daemon and the launcher (which exits when the
daemon closes its pipe, or dies). Jobs with other commands take the shell wrapper, and so
does a job whenever the launcher fails (a launcher that cannot start is not tried again for
that interpreter and environment). One launcher at a time: a job with another interpreter or
`PYTHON*` environment replaces it. A launcher imports its modules once: a changed dassco_hpc
is picked up by the next daemon start.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal, TypeVar, TypeVarTuple

import anyio
import anyio.to_thread
import psutil
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from dasscod.cluster.base import (
    JobInfo,
    JobSpec,
    SchedulerError,
    SchedulerState,
    Transport,
    TransportError,
)
from dasscod.cluster.local import LocalTransport
from dasscod.log import get_logger

log = get_logger(__name__)

#: How long submit waits for the wrapper to record its pid before giving the launch up.
SUBMIT_WAIT_S = 10.0
#: How long submit still waits once the launched process has died without recording a pid
#: (`setsid` forks when started as a group leader: then what died was only its parent).
LAUNCH_GRACE_S = 1.0
#: The launch command only forks the wrapper, so it returns at once.
LAUNCH_TIMEOUT_S = 30.0
#: Grace between `timeout`'s SIGTERM and its SIGKILL when a job overruns or is cancelled.
KILL_AFTER_S = 30
#: The wrapper's `date +%s` and psutil's process start time disagree by rounding (up to ~2 s);
#: a reused pid would have to come round within this window to fool the check.
START_TOLERANCE_S = 3.0
#: What `timeout` exits with when it stopped the job: 124 after SIGTERM, 128+9 after SIGKILL.
TIMEOUT_EXITS = frozenset({124, 128 + signal.SIGKILL})
#: Job names become folder names: no separators, no dot files.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")

ABANDONED: Final = "abandoned"
Claim = int | Literal["abandoned"] | None
VANISHED = "process vanished without an exit status (killed?)"

#: $0 of the wrapper shell: how cancel() recognises the wrapper among all processes.
WRAPPER_NAME = "dasscod-direct-job"

#: The detached wrapper, run as `sh -c WRAPPER dasscod-direct-job STATE LIMIT WORKDIR ARGV...`.
#: The job's argv arrives as positional arguments and is never part of the script text. The job
#: runs in the background so a SIGTERM (cancel) interrupts `wait` and can be forwarded to
#: `timeout`, which passes it on to the job's whole process group.
WRAPPER = f"""\
state=$1 limit=$2 workdir=$3
shift 3
child= term= interrupted=
trap 'term=1 interrupted=1; [ -z "$child" ] || kill -TERM "$child" 2>/dev/null' TERM
finish() {{
    trap '' TERM  # inherited as ignored by mv: a late cancel cannot lose the exit status
    printf '%s\\n' "$1" >"$state/exit.tmp" && mv -f -- "$state/exit.tmp" "$state/exit"
    exit 0
}}
date +%s >"$state/started"
# ln (link(2)) fails when "pid" exists: the daemon abandoned this launch, nothing may run.
if ! {{ printf '%s\\n' "$$" >"$state/pid.tmp" && ln -- "$state/pid.tmp" "$state/pid"; }}; then
    rm -f -- "$state/pid.tmp"
    echo "dasscod: could not claim $state (abandoned by the daemon?); not running the job"
    exit 0
fi
rm -f -- "$state/pid.tmp"
if [ -e "$state/cancelled" ]; then finish 143; fi
if ! mkdir -p -- "$workdir" || ! cd -- "$workdir"; then
    echo "dasscod: cannot create or enter the workdir $workdir" >>"$state/stderr"
    finish 125
fi
timeout --kill-after={KILL_AFTER_S}s "${{limit}}s" "$@" \\
    </dev/null >>"$state/stdout" 2>>"$state/stderr" &
child=$!
if [ -n "$term" ]; then kill -TERM "$child" 2>/dev/null; fi
wait "$child"
status=$?
# After the SIGTERM trap a status above 128 may only mean that it interrupted wait, which then
# has not taken the child's status: wait again for that (127: it had been taken after all).
while [ -n "$interrupted" ] && [ "$status" -gt 128 ]; do
    interrupted=
    wait "$child"
    again=$?
    [ "$again" -eq 127 ] && break
    status=$again
done
finish "$status"
"""

#: Starts the wrapper in a session of its own -- so neither the daemon's death nor a Ctrl-C in
#: its terminal reaches it -- with its output away from our pipes, and prints its pid.
#: Run as `sh -c LAUNCHER dasscod-direct-launch WRAPPER STATE LIMIT WORKDIR ARGV...`.
LAUNCHER = f"""\
wrapper=$1
shift
setsid sh -c "$wrapper" {WRAPPER_NAME} "$@" </dev/null >>"$1/wrapper.log" 2>&1 &
echo "$!"
"""

#: $0 of the warm launcher, and so of every job wrapper forked from it.
WARM_NAME = "dasscod-direct-warm"
#: Modules whose `python -m` jobs start warm, and what the launcher imports for them
#: (`python -m dassco_hpc` runs dassco_hpc.__main__, which imports the runner's CLI).
WARM_MODULES: Mapping[str, Sequence[str]] = {"dassco_hpc": ("dassco_hpc.cli",)}
#: Replies longer than this are not from our launcher.
WARM_REPLY_MAX = 64 * 1024
#: How long the launcher may take to import its modules and say it is ready.
WARM_START_S = 30.0
#: The launcher's own messages (import failures), next to the job folders.
WARM_LOG = ".warm-launcher.log"

#: The warm launcher, run as `python -c WARM_SERVER dasscod-direct-warm KILL_AFTER MODULES`.
#: Standard library only: it runs with the jobs' interpreter, not the daemon's. It reads one
#: JSON request per line ({state, limit, workdir, argv, env}) and answers one line per
#: request ({"pid": wrapper pid}, once the wrapper has claimed its folder, or {"error": ...});
#: end of input (the daemon closed the pipe or died) ends it. Each request forks a
#: short-lived child that forks the wrapper and exits, so the wrapper is nobody's child here;
#: the wrapper mirrors the shell WRAPPER.
WARM_SERVER = r"""
import json, os, runpy, signal, sys, time, traceback

KILL_AFTER = int(sys.argv[2])
if sys.path and sys.path[0] == "":
    del sys.path[0]  # a job's `python -m` puts its own folder there, never ours
ready, failed = [], {}
for module, imports in json.loads(sys.argv[3]).items():
    try:
        for name in imports:
            __import__(name)
    except BaseException as exc:
        failed[module] = f"cannot import {name}: {exc!r}"
    else:
        ready.append(module)
print(json.dumps({"ready": ready, "failed": failed}), flush=True)


def put(path, text, mode="w"):
    with open(path, mode) as f:
        f.write(text)


def run_job(req):
    # The job: its own process group (the wrapper signals it there, and it passes on to
    # the module's children), stdio to the state files, the job's environment and folder.
    os.setpgid(0, 0)
    for sig in (signal.SIGTERM, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for `sh`'s background job
    code = 1
    try:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            opened = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        os.environ.clear()
        os.environ.update(req["env"])
        try:
            os.chdir(req["workdir"])
        except OSError as exc:
            print(f"dasscod: cannot create or enter the workdir {req['workdir']}: {exc}",
                  file=sys.stderr)
            code = 125
            return
        sys.path.insert(0, os.getcwd())  # what `python -m` puts first
        sys.argv = [req["argv"][0], *req["argv"][3:]]
        try:
            runpy.run_module(req["argv"][2], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code & 0xFF)


def wrapper(req, claimed):
    os.setsid()
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # closed with the rest below
    # The wrapper's working directory is its state folder: cancel() finds the folder there.
    os.chdir(req["state"])
    log = os.open("wrapper.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    # The launcher's pipes to the daemon among them; `claimed` stays open until the claim.
    os.closerange(3, claimed)
    os.closerange(claimed + 1, 1 << 16)
    st = {"job": None, "term": False, "phase": "run", "timed_out": False, "killed": False}

    def send(sig):
        if st["job"] is not None:
            try:
                os.killpg(st["job"], sig)
            except ProcessLookupError:
                pass

    def stop_job():  # SIGTERM now, SIGKILL after KILL_AFTER s, as `timeout --kill-after`
        st["phase"] = "term"
        send(signal.SIGTERM)
        signal.alarm(KILL_AFTER)

    def on_term(signum, frame):
        st["term"] = True
        if st["job"] is not None and st["phase"] == "run":
            stop_job()

    def on_alarm(signum, frame):
        if st["phase"] == "run":
            st["timed_out"] = True
            stop_job()
        else:
            st["killed"] = True
            send(signal.SIGKILL)

    def finish(code):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a late cancel cannot lose the status
        signal.alarm(0)
        put("exit.tmp", f"{code}\n")
        os.replace("exit.tmp", "exit")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    put("started", f"{time.time():.3f}\n")
    put("pid.tmp", f"{os.getpid()}\n")
    try:
        os.link("pid.tmp", "pid")  # fails when the daemon abandoned this launch
    except FileExistsError:
        os.unlink("pid.tmp")
        print(f"dasscod: could not claim {req['state']} (abandoned by the daemon?); "
              "not running the job", flush=True)
        os._exit(0)
    os.unlink("pid.tmp")
    # Only now the launcher answers: the daemon finds the claim at its first look.
    os.write(claimed, str(os.getpid()).encode())
    os.close(claimed)
    print("dasscod: started from the warm launcher", flush=True)
    if os.path.exists("cancelled") or st["term"]:
        finish(143)
    try:
        os.makedirs(req["workdir"], exist_ok=True)
    except OSError as exc:
        put("stderr", f"dasscod: cannot create or enter the workdir {req['workdir']}: {exc}\n",
            "a")
        finish(125)
    job = os.fork()
    if job == 0:
        run_job(req)
    try:
        os.setpgid(job, job)  # also here, so that no signal can miss the job's group
    except OSError:
        pass
    st["job"] = job
    if st["term"] and st["phase"] == "run":
        stop_job()
    elif st["phase"] == "run":
        signal.alarm(int(req["limit"]))
    _, status = os.waitpid(job, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        code = 128 - code
    if st["timed_out"]:
        code = 128 + signal.SIGKILL if st["killed"] else 124
    finish(code)


def launch(req):
    # The wrapper writes its pid to w once it has claimed the folder; end of file without it
    # means it did not (abandoned, or it died).
    r, w = os.pipe()
    first = os.fork()
    if first == 0:
        try:
            os.close(r)
            if os.fork() == 0:
                try:
                    wrapper(req, w)
                finally:
                    os._exit(0)
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 64):
        data += chunk
    os.close(r)
    os.waitpid(first, 0)
    if data.isdigit():
        return {"pid": int(data)}
    return {"error": "the wrapper did not claim its folder (see its wrapper.log)"}


for line in sys.stdin:
    try:
        reply = launch(json.loads(line))
    except Exception as exc:
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        print(json.dumps(reply), flush=True)
    except BrokenPipeError:
        break
"""

T = TypeVar("T")
Args = TypeVarTuple("Args")


class DirectScheduler:
    """Jobs as detached processes on this machine, tracked through their state folders.

    Launching goes through the transport, so the command path has the same shape as a batch
    system's; reading the state folders and the process table is done locally, which is right
    by definition: "direct" runs on the daemon's machine."""

    kind = "direct"

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

    async def cancel(self, job_id: str) -> None:
        """Mark the job cancelled, then SIGTERM the wrapper's process group: the wrapper
        forwards it to the job, which gets `KILL_AFTER_S` to report before a SIGKILL. A job
        that is not running (any more) is left alone without error."""
        pid = _pid(job_id)
        folder = await self._local(self._folder_of_wrapper, pid) if pid else None
        if pid and folder:
            await self._local(_cancel, folder, pid)

    # -- submission

    async def _launch(self, folder: JobFolder, spec: JobSpec) -> str:
        claim: Claim = None
        problem = f"its wrapper recorded no pid within {SUBMIT_WAIT_S:g} s"
        # A failed warm launch falls back to the shell wrapper. Should the warm wrapper have
        # started after all (its answer lost), the shell wrapper's claim fails and it exits.
        warm = await self._warm.launch(folder.path, spec) if self._warm is not None else None
        if warm is not None:
            claim = await self._await_claim(folder, warm)
        else:
            result = await self.transport.run(
                self._launch_argv(folder, spec), env=spec.env, timeout=LAUNCH_TIMEOUT_S
            )
            if result.exit_status == 0:
                claim = await self._await_claim(folder, _pid(result.stdout.strip()))
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
            if launched is not None and not _alive(launched, None):
                deadline = min(deadline, now + LAUNCH_GRACE_S)
                launched = None
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _launch_argv(self, folder: JobFolder, spec: JobSpec) -> list[str]:
        return [
            "sh", "-c", LAUNCHER, "dasscod-direct-launch", WRAPPER,
            str(folder.path), str(spec.time_limit_s), str(spec.workdir), *spec.argv,
        ]  # fmt: skip

    # -- queries (run in a worker thread: file system and process table)

    def _lookup(self, names: list[str], launching: frozenset[str]) -> dict[str, JobInfo]:
        found: dict[str, JobInfo] = {}
        for name in names:
            folder = self._folder(name)
            if folder is not None:
                found[name] = _inspect(folder, name, launching=name in launching)
        return found

    def _status(self, jobs: dict[str, str], launching: frozenset[str]) -> dict[str, JobInfo]:
        infos: dict[str, JobInfo] = {}
        for job_id, name in jobs.items():
            folder = self._folder(name)
            if folder is None:
                infos[job_id] = JobInfo(job_id, name, SchedulerState.UNKNOWN,
                                        reason=f"no state folder for {name}")
                continue
            info = _inspect(folder, name, launching=name in launching)
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
        return folder if folder.claim() == pid and _alive(pid, folder.started()) else None

    async def _local(self, func: Callable[[*Args], T], *args: *Args) -> T:
        """Run blocking state-folder work in a thread. A state folder we cannot read or write
        makes this "cluster" unusable, which is what TransportError means."""
        try:
            return await anyio.to_thread.run_sync(func, *args)
        except OSError as exc:
            raise TransportError(f"{self.transport.name}: job state folder: {exc}") from exc


#: A launcher serves jobs of one interpreter and one PYTHON* environment.
WarmKey = tuple[str, frozenset[tuple[str, str]]]


class WarmLauncher:
    """The daemon's side of the warm launcher (`WARM_SERVER`): started on first use, one
    request at a time, stopped when anything goes wrong with it (the caller then takes the
    shell wrapper) and restarted for a later job -- unless it could not start at all."""

    def __init__(self, modules: Mapping[str, Sequence[str]], log_path: Path) -> None:
        self.modules = {m: tuple(imports) for m, imports in modules.items()}
        self.log_path = log_path
        self._lock = anyio.Lock()
        self._process: Process | None = None
        self._replies: BufferedByteReceiveStream | None = None
        #: What the running launcher was started with: (interpreter, PYTHON* environment).
        self._key: WarmKey | None = None
        self._ready: frozenset[str] = frozenset()
        #: Launchers that could not start (an import failed, say): not tried again.
        self._failed: set[WarmKey] = set()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def launch(self, folder: Path, spec: JobSpec) -> int | None:
        """The wrapper's pid, or None: not a warm job, or the launcher failed (the caller
        launches it the usual way)."""
        argv = spec.argv
        if len(argv) < 3 or argv[1] != "-m" or argv[2] not in self.modules:
            return None
        env = {**os.environ, **spec.env}
        key = (argv[0], frozenset((k, v) for k, v in env.items() if k.startswith("PYTHON")))
        if key in self._failed:
            return None
        request = {"state": str(folder), "limit": spec.time_limit_s,
                   "workdir": str(spec.workdir), "argv": list(argv), "env": env}
        async with self._lock:
            try:
                if self._key != key:
                    await self._stop()
                    await self._start(key, env)
                if argv[2] not in self._ready:
                    return None
                reply = await self._ask(request)
            except Exception as exc:
                # The launcher's answers may be out of step with its questions now: a new
                # launcher for the next job.
                with anyio.CancelScope(shield=True):
                    await self._stop()
                log.warning("warm launcher failed; the job takes the shell wrapper",
                            error=f"{type(exc).__name__}: {exc}")
                return None
            except BaseException:  # cancelled mid-question: the same, then go
                with anyio.CancelScope(shield=True):
                    await self._stop()
                raise
        pid = reply.get("pid")
        if isinstance(pid, int) and pid > 0:
            return pid
        log.warning("warm launcher could not fork the job; it takes the shell wrapper",
                    error=str(reply.get("error")))
        return None

    async def _start(self, key: WarmKey, env: dict[str, str]) -> None:
        # The launcher keeps no job's token: DASSCO_* variables are per job.
        base = {k: v for k, v in env.items() if not k.startswith("DASSCO_")}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self._process = await anyio.open_process(
                [key[0], "-c", WARM_SERVER, WARM_NAME, str(KILL_AFTER_S),
                 json.dumps(self.modules)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                env=base, cwd="/", start_new_session=True,
            )  # fmt: skip
        assert self._process.stdout is not None
        self._replies = BufferedByteReceiveStream(self._process.stdout)
        self._key = key
        try:
            with anyio.fail_after(WARM_START_S):
                hello = await self._line()
        except Exception:
            self._failed.add(key)
            raise
        self._ready = frozenset(m for m in hello.get("ready", ()) if m in self.modules)
        failed = hello.get("failed") or {}
        if failed:
            log.warning("warm launcher cannot prepare some modules; their jobs take the shell "
                        "wrapper", failed=failed, log=str(self.log_path))
        if not self._ready:  # nothing to serve: not worth a process
            self._failed.add(key)
            await self._stop()

    async def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._process is not None and self._process.stdin is not None
        with anyio.fail_after(LAUNCH_TIMEOUT_S):
            await self._process.stdin.send(json.dumps(request).encode() + b"\n")
            return await self._line()

    async def _line(self) -> dict[str, Any]:
        assert self._replies is not None
        data = await self._replies.receive_until(b"\n", WARM_REPLY_MAX)
        reply = json.loads(data)
        if not isinstance(reply, dict):
            raise ValueError(f"unexpected answer {data[:200]!r}")
        return reply

    async def _stop(self) -> None:
        process, self._process, self._replies, self._key = self._process, None, None, None
        self._ready = frozenset()
        if process is None:
            return
        with contextlib.suppress(Exception):
            if process.stdin is not None:
                await process.stdin.aclose()  # end of input: the launcher exits
        with anyio.move_on_after(2):
            await process.wait()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        await process.aclose()

    async def aclose(self) -> None:
        async with self._lock:
            await self._stop()


class JobFolder:
    """One job's state folder and the files in it (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self, spec: JobSpec) -> bool:
        """Create the folder exclusively and record the spec; False if it existed already."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.path.mkdir()
        except FileExistsError:
            return False
        (self.path / "spec.json").write_text(json.dumps(_spec_record(spec), indent=2) + "\n")
        return True

    def claim(self) -> Claim:
        """The wrapper's pid, ABANDONED, or None while nobody has claimed the folder."""
        text = self._read("pid")
        if text is None:
            return None
        return ABANDONED if text == ABANDONED else _pid(text) or ABANDONED

    def settle(self) -> Claim:
        """Abandon the launch unless the wrapper claimed the folder first; return who won."""
        mine = self.path / "pid.abandoned"
        mine.write_text(ABANDONED + "\n")
        try:
            (self.path / "pid").hardlink_to(mine)
        except FileExistsError:
            pass
        finally:
            mine.unlink(missing_ok=True)
        return self.claim()

    def started(self) -> float | None:
        return _number(self._read("started"))

    def exit_status(self) -> int | None:
        value = _number(self._read("exit"))
        return int(value) if value is not None else None

    def run_time(self) -> float | None:
        """From the wrapper's start to its exit file."""
        started = self.started()
        try:
            ended = (self.path / "exit").stat().st_mtime
        except FileNotFoundError:
            return None
        return ended - started if started is not None else None

    def time_limit(self) -> int | None:
        try:
            limit = json.loads(self._read("spec.json") or "{}").get("time_limit_s")
        except ValueError:
            return None
        return limit if isinstance(limit, int) else None

    def cancelled(self) -> bool:
        return (self.path / "cancelled").exists()

    def mark_cancelled(self) -> None:
        (self.path / "cancelled").write_text(datetime.now(UTC).isoformat() + "\n")

    def wrapper_log(self) -> str:
        return (self._read("wrapper.log") or "")[-500:]

    def _read(self, name: str) -> str | None:
        try:
            return (self.path / name).read_text().strip()
        except FileNotFoundError:
            return None


def _inspect(folder: JobFolder, name: str, *, launching: bool) -> JobInfo:
    """The job's state from its folder; settles an unclaimed launch unless it is under way."""
    claim = folder.claim()
    if claim is None and not launching:
        claim = folder.settle()
    if claim is None:
        return JobInfo("", name, SchedulerState.PENDING, reason="being launched")
    if claim == ABANDONED:
        return JobInfo(
            "", name, SchedulerState.FAILED,
            reason=f"never started: its submission was interrupted before the job's process "
            f"recorded itself in {folder.path}",
        )  # fmt: skip
    code = folder.exit_status()
    if code is None:
        if _alive(claim, folder.started()):
            return JobInfo(str(claim), name, SchedulerState.RUNNING)
        code = folder.exit_status()  # it may have finished between the two looks
        if code is None:
            return JobInfo(str(claim), name, SchedulerState.FAILED, reason=VANISHED)
    return _finished(folder, name, str(claim), code)


def _finished(folder: JobFolder, name: str, job_id: str, code: int) -> JobInfo:
    if folder.cancelled():
        return JobInfo(job_id, name, SchedulerState.CANCELLED, code, "cancelled")
    if code == 0:
        return JobInfo(job_id, name, SchedulerState.COMPLETED, 0)
    limit = folder.time_limit()
    ran = folder.run_time()
    if code in TIMEOUT_EXITS and limit is not None and ran is not None and ran >= limit:
        return JobInfo(job_id, name, SchedulerState.TIMEOUT, code,
                       f"exceeded its time limit of {limit} s")
    return JobInfo(job_id, name, SchedulerState.FAILED, code,
                   f"{_describe(code)}; output in {folder.path}")


def _describe(code: int) -> str:
    """Exit statuses as `timeout` and the shell use them."""
    if code == 125:
        return "the job could not be started (see its stderr)"
    if code == 126:
        return "the command could not be executed"
    if code == 127:
        return "command not found"
    if code > 128:
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return f"exit status {code}"


def _alive(pid: int, started: float | None) -> bool:
    """Whether `pid` is a live process that started when the wrapper said it did."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        created = process.create_time()
    except psutil.Error:
        return False
    return started is None or abs(created - started) <= START_TOLERANCE_S


def _cancel(folder: JobFolder, pid: int) -> None:
    if folder.exit_status() is not None:
        return  # finished already: do not relabel it as cancelled
    folder.mark_cancelled()
    with contextlib.suppress(ProcessLookupError):  # ended meanwhile
        os.killpg(pid, signal.SIGTERM)


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


def _spec_record(spec: JobSpec) -> dict[str, object]:
    return {
        "name": spec.name,
        "argv": list(spec.argv),
        "workdir": str(spec.workdir),
        "env_names": sorted(spec.env),
        "time_limit_s": spec.time_limit_s,
        "cpus": spec.cpus,  # recorded, not enforced: the direct scheduler shares one machine
        "memory_mb": spec.memory_mb,
        "submitted_at": datetime.now(UTC).isoformat(),
    }


def _pid(text: str) -> int | None:
    return int(text) if text.isdigit() and int(text) > 0 else None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
