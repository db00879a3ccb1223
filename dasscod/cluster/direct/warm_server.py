"""The warm launcher: forks `python -m MODULE` jobs from a Python that has imported MODULE.

Run as `python -c "$(cat warm_server.py)" dasscod-direct-warm KILL_AFTER MODULES` by
`dasscod.cluster.direct.warm` (MODULES: JSON, module -> what to import for it). Standard library
only: it runs with the jobs' interpreter, not the daemon's, so it never imports dasscod.

It prints one line, {"ready": [...], "failed": {module: reason}}, once its imports are done,
then reads one JSON request per line ({state, limit, workdir, argv, env}) and answers one line
per request ({"pid": wrapper pid}, once the wrapper has claimed its folder, or {"error": ...});
end of input (the daemon closed the pipe or died) ends it. Each request forks a short-lived
child that forks the wrapper and exits, so the wrapper is nobody's child here; the wrapper
mirrors the shell wrapper (wrapper.sh): a session of its own, the claim by link(2), the same
state files, the time limit with a kill after KILL_AFTER seconds, SIGTERM forwarded.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import signal
import sys
import time
import traceback
from types import FrameType
from typing import Any, TypedDict


class Request(TypedDict):
    state: str
    limit: int
    workdir: str
    argv: list[str]
    env: dict[str, str]


def prepare(modules: dict[str, list[str]]) -> dict[str, Any]:
    """Import what each module's jobs need; the hello line says which modules are ready."""
    ready: list[str] = []
    failed: dict[str, str] = {}
    for module, imports in modules.items():
        name = ""
        try:
            for name in imports:
                __import__(name)
        except BaseException as exc:
            failed[module] = f"cannot import {name}: {exc!r}"
        else:
            ready.append(module)
    return {"ready": ready, "failed": failed}


def put(path: str, text: str, mode: str = "w") -> None:
    with open(path, mode) as f:  # noqa: PTH123 - plain file writes in the forked wrapper
        f.write(text)


def exit_code(status: int, *, timed_out: bool, killed: bool) -> int:
    """The exit status as `timeout` reports it: 124 after its SIGTERM at the limit, 128+9
    after its SIGKILL, 128+N for a job killed by signal N."""
    if timed_out:
        return 128 + signal.SIGKILL if killed else 124
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def run_job(req: Request) -> None:
    """The job: its own process group (the wrapper signals it there, and it passes on to the
    module's children), stdio to the state files, the job's environment and folder."""
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
                  file=sys.stderr)  # fmt: skip
            code = 125
            return
        sys.path.insert(0, os.getcwd())  # what `python -m` puts first  # noqa: PTH109
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
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code & 0xFF)


def wrapper(req: Request, claimed: int, kill_after: int) -> None:
    """Claim the state folder, report the claim on the `claimed` pipe, run the job under its
    time limit and write its exit status; never returns."""
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
    job: int | None = None
    term = timed_out = killed = False
    phase = "run"

    def send(sig: int) -> None:
        if job is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job, sig)

    def stop_job() -> None:  # SIGTERM now, SIGKILL after kill_after s, as `timeout -k`
        nonlocal phase
        phase = "term"
        send(signal.SIGTERM)
        signal.alarm(kill_after)

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal term
        term = True
        if job is not None and phase == "run":
            stop_job()

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        nonlocal timed_out, killed
        if phase == "run":
            timed_out = True
            stop_job()
        else:
            killed = True
            send(signal.SIGKILL)

    def finish(code: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a late cancel cannot lose the status
        signal.alarm(0)
        put("exit.tmp", f"{code}\n")
        os.replace("exit.tmp", "exit")  # noqa: PTH105
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    put("started", f"{time.time():.3f}\n")
    put("pid.tmp", f"{os.getpid()}\n")
    try:
        os.link("pid.tmp", "pid")  # fails when the daemon abandoned this launch
    except FileExistsError:
        os.unlink("pid.tmp")  # noqa: PTH108
        print(f"dasscod: could not claim {req['state']} (abandoned by the daemon?); "
              "not running the job", flush=True)  # fmt: skip
        os._exit(0)
    os.unlink("pid.tmp")  # noqa: PTH108
    # Only now the launcher answers: the daemon finds the claim at its first look.
    os.write(claimed, str(os.getpid()).encode())
    os.close(claimed)
    print("dasscod: started from the warm launcher", flush=True)
    if os.path.exists("cancelled") or term:  # noqa: PTH110
        finish(143)
    try:
        os.makedirs(req["workdir"], exist_ok=True)  # noqa: PTH103
    except OSError as exc:
        put("stderr", f"dasscod: cannot create or enter the workdir {req['workdir']}: {exc}\n",
            "a")  # fmt: skip
        finish(125)
    forked = os.fork()
    if forked == 0:
        run_job(req)
    with contextlib.suppress(OSError):
        os.setpgid(forked, forked)  # also here, so that no signal can miss the job's group
    job = forked
    if term and phase == "run":
        stop_job()
    elif phase == "run":
        signal.alarm(int(req["limit"]))
    _, status = os.waitpid(forked, 0)
    finish(exit_code(status, timed_out=timed_out, killed=killed))


def launch(req: Request, kill_after: int) -> dict[str, Any]:
    """Fork the wrapper, detached; its pid once it has claimed the folder, or an error."""
    # The wrapper writes its pid to w once it has claimed the folder; end of file without it
    # means it did not (abandoned, or it died).
    r, w = os.pipe()
    first = os.fork()
    if first == 0:
        try:
            os.close(r)
            if os.fork() == 0:
                try:
                    wrapper(req, w, kill_after)
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


def main(argv: list[str]) -> None:
    kill_after = int(argv[2])
    if sys.path and sys.path[0] == "":
        del sys.path[0]  # a job's `python -m` puts its own folder there, never ours
    print(json.dumps(prepare(json.loads(argv[3]))), flush=True)
    for line in sys.stdin:
        try:
            reply = launch(json.loads(line), kill_after)
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            print(json.dumps(reply), flush=True)
        except BrokenPipeError:
            break


if __name__ == "__main__":
    main(sys.argv)
