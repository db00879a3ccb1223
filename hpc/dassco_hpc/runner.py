"""`dassco-hpc run MODULE`: one job attempt, from *started* to *finished* or *failed*.

The module's outcome is always reported: its results, its own failure (`ModuleFailed`), any
other exception (retryable, with the traceback), or the scheduler's SIGTERM. A report that
cannot be delivered before the callback deadline is saved in the work folder for
`dassco-hpc replay`. Exit codes are in `dassco_hpc.exitcodes`.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

from dassco_hpc import exitcodes, undelivered
from dassco_hpc.client import Ack, CallbackClient
from dassco_hpc.config import Identity
from dassco_hpc.context import JobContext
from dassco_hpc.errors import CallbackError, CallbackRejected, CallbackUndelivered, ModuleFailed
from dassco_hpc.log import Logger, stderr_log
from dassco_hpc.resolve import ModuleBroken, ModuleFunction, ModuleNotFound, resolve
from dassco_hpc.results import InvalidResults, normalise

#: After SIGTERM the scheduler kills the job soon (Slurm's KillWait defaults to 30 s): the
#: last report gets this long before it is saved for replay instead.
TERM_GRACE_S = 20.0
TERMINATED_REASON = "terminated by signal"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

Send = Callable[[CallbackClient], Ack]


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT; a BaseException so that a module's
    `except Exception` does not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} received")
        self.signum = signum


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """While inside: the first SIGTERM or SIGINT raises `Terminated`, later ones are ignored.
    Signals that were ignored when we started (a background job's SIGINT) stay ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    handled = [s for s, h in previous.items() if h is not signal.SIG_IGN]

    def handler(signum: int, frame: FrameType | None) -> None:
        for s in handled:
            signal.signal(s, signal.SIG_IGN)
        raise Terminated(signum)

    for s in handled:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s in handled:
            old = previous[s]
            signal.signal(s, old if old is not None else signal.SIG_DFL)


@dataclass
class _Failure:
    reason: str
    retryable: bool
    exception: str | None = None


@dataclass
class _State:
    phase: Literal["starting", "module", "reporting", "done"] = "starting"
    started_at: float | None = None
    #: The report being sent now; re-sent on SIGTERM if it was the final one.
    pending: Send | None = None


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


@dataclass
class Runner:
    identity: Identity
    client: CallbackClient
    env: Mapping[str, str]
    term_grace_s: float = TERM_GRACE_S
    log: Logger = field(default=stderr_log, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def run(self, module_name: str) -> int:
        state = _State()
        with stop_signals_raise():
            try:
                return self._run(module_name, state)
            except Terminated as stop:
                return self._terminated(stop, state)

    # ------------------------------------------------------------------ the attempt

    def _run(self, name: str, state: _State) -> int:
        try:
            return self._attempt(name, state)
        except CallbackUndelivered as exc:
            self._save(exc)
            return exitcodes.TEMPFAIL
        except CallbackRejected as exc:
            self.log(f"{exc}; giving up")
            return exitcodes.NOPERM if exc.auth else exitcodes.UNAVAILABLE

    def _attempt(self, name: str, state: _State) -> int:
        who = self.identity
        self.log(
            f"{who.asset_guid} {who.job}#{who.attempt}: module {name}, work folder {who.workdir}"
        )
        try:
            who.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return self._fail(
                state,
                f"cannot create the work folder {who.workdir}: {exc}",
                retryable=False,
                exit_code=exitcodes.CONFIG,
            )
        self._report(
            state,
            lambda c: c.started(who.asset_guid, who.job, who.attempt, hpc_job_id=who.hpc_job_id),
        )
        try:
            function = resolve(name, self.env)
        except ModuleNotFound as exc:
            return self._fail(state, str(exc), retryable=False, exit_code=exitcodes.CONFIG)
        except ModuleBroken as exc:
            return self._fail(
                state, str(exc), retryable=False, exit_code=exitcodes.CONFIG, exception=exc.details
            )
        ctx = JobContext(
            guid=who.asset_guid,
            job=who.job,
            attempt=who.attempt,
            workdir=who.workdir,
            asset_files=who.asset_files,
            client=self.client,
            hpc_job_id=who.hpc_job_id,
            logger=self.log,
        )
        try:
            os.chdir(who.workdir)
        except OSError as exc:
            return self._fail(
                state,
                f"cannot enter the work folder {who.workdir}: {exc}",
                retryable=False,
                exit_code=exitcodes.CONFIG,
            )
        state.phase = "module"
        state.started_at = self.clock()
        outcome = self._call(name, function, ctx)
        run_time = self.clock() - state.started_at
        if isinstance(outcome, _Failure):
            self.log(f"module {name} failed after {run_time:.2f} s: {outcome.reason}")
            return self._fail(
                state,
                outcome.reason,
                retryable=outcome.retryable,
                exit_code=exitcodes.MODULE_FAILED,
                exception=outcome.exception,
                run_time_s=run_time,
            )
        self.log(f"module {name} done in {run_time:.2f} s")
        state.phase = "reporting"
        try:
            self._report(
                state,
                lambda c: c.finished(
                    who.asset_guid, who.job, who.attempt, results=outcome, run_time_s=run_time
                ),
            )
        except CallbackRejected as exc:
            if exc.status == 422:
                # Otherwise the job would stay RUNNING until the daemon's watcher notices.
                try:
                    self._fail(
                        state,
                        f"the listener refused the results: {exc.detail}",
                        retryable=False,
                        exit_code=exitcodes.UNAVAILABLE,
                        run_time_s=run_time,
                    )
                except CallbackError as second:
                    self.log(f"could not report the refusal: {second}")
            raise
        state.phase = "done"
        return exitcodes.OK

    def _call(
        self, name: str, function: ModuleFunction, ctx: JobContext
    ) -> dict[str, Any] | _Failure:
        try:
            raw = function(ctx)
        except ModuleFailed as exc:
            chained = exc.__cause__ is not None or exc.__context__ is not None
            return _Failure(
                exc.reason or "module failed", exc.retryable, _traceback(exc) if chained else None
            )
        except CallbackRejected as exc:
            # The same call would be refused again.
            return _Failure(f"{type(exc).__name__}: {exc}", False, _traceback(exc))
        except Exception as exc:
            return _Failure(f"{type(exc).__name__}: {exc}", True, _traceback(exc))
        except SystemExit as exc:
            return _Failure(f"module called exit({exc.code!r})", True, _traceback(exc))
        try:
            return normalise(raw)
        except InvalidResults as exc:
            return _Failure(f"module {name} returned invalid results: {exc}", False)

    # ------------------------------------------------------------------ reporting

    def _report(self, state: _State, send: Send) -> Ack:
        state.pending = send
        ack = send(self.client)
        state.pending = None
        if not ack.applied:
            self.log(f"acknowledged, not applied (status {ack.status}): {ack.detail}")
        return ack

    def _failed_report(
        self,
        reason: str,
        *,
        retryable: bool,
        exit_code: int,
        exception: str | None,
        run_time_s: float | None,
    ) -> Send:
        who = self.identity
        return lambda c: c.failed(
            who.asset_guid,
            who.job,
            who.attempt,
            reason=reason,
            retryable=retryable,
            exit_code=exit_code,
            exception=exception,
            run_time_s=run_time_s,
        )

    def _fail(
        self,
        state: _State,
        reason: str,
        *,
        retryable: bool,
        exit_code: int,
        exception: str | None = None,
        run_time_s: float | None = None,
    ) -> int:
        state.phase = "reporting"
        self._report(
            state,
            self._failed_report(
                reason,
                retryable=retryable,
                exit_code=exit_code,
                exception=exception,
                run_time_s=run_time_s,
            ),
        )
        state.phase = "done"
        return exit_code

    def _terminated(self, stop: Terminated, state: _State) -> int:
        code = exitcodes.for_signal(stop.signum)
        name = signal.Signals(stop.signum).name
        if state.phase == "done":
            self.log(f"{name} received after the last report")
            return code
        if state.phase == "reporting" and state.pending is not None:
            # The module's outcome is known: deliver that, not a termination.
            self.log(f"{name} received while reporting; sending the report once more")
            send = state.pending
        else:
            self.log(f"{name} received during the {state.phase} phase; reporting the failure")
            run_time = None if state.started_at is None else self.clock() - state.started_at
            send = self._failed_report(
                TERMINATED_REASON,
                retryable=True,
                exit_code=code,
                exception=_traceback(stop),
                run_time_s=run_time,
            )
        try:
            send(self.client.with_deadline(min(self.term_grace_s, self.client.deadline_s)))
        except CallbackUndelivered as exc:
            self._save(exc)
        except CallbackRejected as exc:
            self.log(f"{exc}; giving up")
        return code

    def _save(self, exc: CallbackUndelivered) -> None:
        workdir = self.identity.workdir
        try:
            path = undelivered.save(workdir, exc, base_url=self.client.base_url)
        except OSError as err:
            record = json.dumps({"method": exc.method, "path": exc.path, "body": exc.body})
            self.log(f"could not save the undelivered callback ({err}); it was: {record}")
            return
        self.log(f"saved for `dassco-hpc replay {workdir}` in {path}")
