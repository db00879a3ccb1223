"""The daemon's side of the warm launcher: one Python per scheduler that has imported the
runner and forks `python -m dassco_hpc` jobs on request (see the package docstring; the
program itself is warm_server.py, run with the jobs' interpreter)."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from dasscod.cluster.base import JobSpec
from dasscod.cluster.direct.folder import KILL_AFTER_S
from dasscod.cluster.environment import job_environment
from dasscod.log import get_logger

log = get_logger(__name__)

#: $0 of the warm launcher, and so of every job wrapper forked from it.
WARM_NAME = "dasscod-direct-warm"
#: Modules whose `python -m` jobs start warm, and what the launcher imports for them
#: (`python -m dassco_hpc` runs dassco_hpc.__main__, which imports the runner's CLI).
WARM_MODULES: Mapping[str, Sequence[str]] = {"dassco_hpc": ("dassco_hpc.cli",)}
#: Replies longer than this are not from our launcher.
WARM_REPLY_MAX = 64 * 1024
#: How long the launcher may take to import its modules and say it is ready.
WARM_START_S = 30.0
#: How long one request (a fork and the wrapper's claim) may take.
WARM_REQUEST_S = 30.0
#: The launcher's own messages (import failures), next to the job folders.
WARM_LOG = ".warm-launcher.log"
#: The program, passed with `-c`: it runs with the jobs' interpreter, which need not have
#: dasscod installed.
WARM_SERVER = resources.files("dasscod.cluster.direct").joinpath("warm_server.py").read_text()


#: A launcher serves jobs of one interpreter and one PYTHON* environment.
WarmKey = tuple[str, frozenset[tuple[str, str]]]


class WarmLauncher:
    """The daemon's side of the warm launcher (warm_server.py): started on first use, one
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
        env = job_environment(spec.env)
        key = _key(argv[0], env)
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

    async def start(self, python: str, env: Mapping[str, str]) -> None:
        """Start the launcher for jobs run by `python` with `env` now, ahead of the first job:
        a job claimed right after the daemon (re)starts then starts warm. A failure is logged,
        not raised: jobs take the shell wrapper."""
        full = job_environment(env)
        key = _key(python, full)
        async with self._lock:
            if key in self._failed or (self._key == key and self._process is not None):
                return
            try:
                await self._stop()
                await self._start(key, full)
            except Exception as exc:
                with anyio.CancelScope(shield=True):
                    await self._stop()
                log.warning("warm launcher could not start; jobs take the shell wrapper",
                            error=f"{type(exc).__name__}: {exc}", log=str(self.log_path))
                return
        log.info("warm launcher started", pid=self.pid, modules=sorted(self._ready))

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
        with anyio.fail_after(WARM_REQUEST_S):
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


def _key(python: str, env: Mapping[str, str]) -> WarmKey:
    return (python, frozenset((k, v) for k, v in env.items() if k.startswith("PYTHON")))
