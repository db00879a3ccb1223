"""The SSH transport: commands on a cluster's login node over one multiplexed connection.

One connection per cluster is shared by every supervisor (each command is a channel on it),
so a watcher's status query and a dispatcher's submissions never open connections of their
own. The host key is checked against a known_hosts file -- there is no trust on first use --
and the client authenticates with a key from the settings.

When the connection drops it is re-opened on the next command, but not more often than the
backoff allows: while a cluster is unreachable every command fails at once with a
TransportError, so its supervisors stop taking new work instead of piling up timeouts.

Commands are argv lists joined with shell quoting; nothing from input is interpolated into a
shell string. Environment values are refused: on a login node they would have to travel on a
command line that every user can read with `ps`. Secrets for a job go into its batch script,
which travels on stdin (see the Slurm adapter).
"""

from __future__ import annotations

import shlex
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncssh

from dasscod.cluster.base import Command, CommandResult, TransportError
from dasscod.cluster.timing import TimedTransport
from dasscod.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str
    key_file: Path
    known_hosts: Path
    port: int = 22
    #: Channels open at once on the connection (sshd's MaxSessions is 10 by default).
    max_channels: int = 8
    connect_timeout_s: float = 15.0
    keepalive_s: float = 30.0
    #: Shortest and longest wait between connection attempts after a failure.
    backoff_s: tuple[float, float] = (1.0, 60.0)


class SshTransport(TimedTransport):
    def __init__(
        self, name: str, target: SshTarget, *, guard: Callable[[], None] | None = None
    ) -> None:
        self.name = name
        #: Called before every command; raises when the daemon may not act (not the leader).
        self.guard = guard
        self.target = target
        self._conn: asyncssh.SSHClientConnection | None = None
        self._connecting = anyio.Lock()
        self._channels = anyio.Semaphore(target.max_channels)
        self._failures = 0
        self._next_attempt = 0.0  # monotonic time before which we do not reconnect
        self._last_error = ""

    async def _run(self, command: Command) -> CommandResult:
        argv, stdin, timeout, env = command.argv, command.stdin, command.timeout, command.env
        if env:
            raise ValueError(
                f"{self.name}: the ssh transport does not pass environment values "
                f"({', '.join(sorted(env))}); put them in the job script instead"
            )
        if not argv:
            raise ValueError("empty command")
        line = shlex.join(argv)
        async with self._channels:
            conn = await self._connection()
            if self.guard is not None:  # after the waits: right before the command leaves
                self.guard()
            try:
                with anyio.fail_after(timeout):
                    done = await conn.run(line, input=stdin, check=False)
            except TimeoutError:
                raise TransportError(
                    f"{self.name}: `{_short(line)}` did not finish within {timeout:g} s"
                ) from None
            except (OSError, asyncssh.Error) as exc:
                self._dropped(conn, exc)
                raise TransportError(f"{self.name}: connection lost running "
                                     f"`{_short(line)}`: {exc}") from exc
            if done.exit_status is None and done.exit_signal is None:
                # The channel closed without an exit status: the command's outcome is
                # unknown (a dropped connection); callers must not take it as a failure.
                if conn.is_closed():
                    self._dropped(conn, ConnectionError("closed by the remote side"))
                raise TransportError(
                    f"{self.name}: connection lost running `{_short(line)}`; "
                    "its outcome is unknown"
                )
        status = done.exit_status
        if status is None and done.exit_signal is not None:
            status = 128 + _signal_number(done.exit_signal[0])
        return CommandResult(
            exit_status=status if status is not None else 255,
            stdout=_text(done.stdout),
            stderr=_text(done.stderr),
        )

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
            self._conn = None

    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._connecting:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            wait = self._next_attempt - time.monotonic()
            if wait > 0:
                raise TransportError(
                    f"{self.name}: {self.target.host} unreachable ({self._last_error}); "
                    f"next connection attempt in {wait:.0f} s"
                )
            try:
                with anyio.fail_after(self.target.connect_timeout_s):
                    self._conn = await asyncssh.connect(
                        self.target.host,
                        port=self.target.port,
                        username=self.target.user,
                        client_keys=[str(self.target.key_file)],
                        known_hosts=str(self.target.known_hosts),
                        keepalive_interval=self.target.keepalive_s,
                        keepalive_count_max=3,
                        agent_path=None,
                    )
            except (TimeoutError, OSError, asyncssh.Error, asyncssh.KeyImportError) as exc:
                # KeyImportError: the key file is not a private key (a configuration mistake,
                # but it too means this cluster cannot be reached).
                self._failed(exc)
                raise TransportError(
                    f"{self.name}: cannot connect to {self.target.user}@{self.target.host}:"
                    f"{self.target.port}: {self._last_error}"
                ) from exc
            if self._failures:
                log.info("ssh connection restored", cluster=self.name, host=self.target.host)
            self._failures = 0
            self._next_attempt = 0.0
            return self._conn

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        low, high = self.target.backoff_s
        delay = min(high, low * 2 ** (self._failures - 1))
        self._next_attempt = time.monotonic() + delay
        self._last_error = str(exc) or type(exc).__name__
        if self._failures == 1:  # one line per outage, not one per attempt
            log.warning("ssh connection failed", cluster=self.name, host=self.target.host,
                        error=self._last_error)

    def _dropped(self, conn: asyncssh.SSHClientConnection, exc: BaseException) -> None:
        if self._conn is conn:
            self._conn = None
        conn.close()
        log.warning("ssh connection dropped", cluster=self.name, host=self.target.host,
                    error=str(exc))


def _signal_number(name: str) -> int:
    try:
        return int(signal.Signals[f"SIG{name}"])
    except KeyError:
        return 0


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _short(command: str, limit: int = 120) -> str:
    return command if len(command) <= limit else command[: limit - 3] + "..."
