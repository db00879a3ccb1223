"""The transport for commands on the daemon's own machine."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Awaitable, Callable, Sequence

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from dasscod.cluster.base import Command, CommandResult, TransportError
from dasscod.cluster.environment import job_environment
from dasscod.cluster.timing import TimedTransport

#: Commands are shown in error messages only up to this length (a wrapper script is long).
SHOWN_COMMAND_CHARS = 200


class LocalTransport(TimedTransport):
    """Runs argv lists as child processes of the daemon, in the basic environment of
    `dasscod.cluster.environment` plus `env`: never the daemon's own (it holds secrets).

    Each command gets its own process group (a new session), so a timeout can kill everything
    it started, not just the first process, and the daemon's terminal signals (Ctrl-C) are not
    delivered to commands the daemon has not decided to stop."""

    def __init__(self, name: str, *, guard: Callable[[], None] | None = None) -> None:
        self.name = name
        #: Called before every command; raises when the daemon may not act (not the leader).
        self.guard = guard
        self._on_close: list[Callable[[], Awaitable[None]]] = []

    def on_close(self, release: Callable[[], Awaitable[None]]) -> None:
        """Have `close` call `release`: for a helper process kept for this machine's jobs
        (the direct scheduler's warm launcher)."""
        self._on_close.append(release)

    async def _run(self, command: Command) -> CommandResult:
        argv, stdin, timeout = command.argv, command.stdin, command.timeout
        if not argv:
            raise TransportError(f"{self.name}: refusing to run an empty command")
        if self.guard is not None:
            self.guard()
        shown = _shown(argv)
        try:
            process = await anyio.open_process(
                list(argv),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                env=job_environment(command.env),
                start_new_session=True,
            )
        except OSError as exc:
            raise TransportError(
                f"{self.name}: cannot run {shown}: {exc.strerror or exc}"
            ) from exc
        try:
            async with process:
                stdout, stderr = await _communicate_within(process, stdin, timeout)
        except TimeoutError as exc:
            raise TransportError(
                f"{self.name}: {shown} did not finish within {timeout:g} s; killed it"
            ) from exc
        assert process.returncode is not None
        return CommandResult(process.returncode, _text(stdout), _text(stderr))

    async def close(self) -> None:
        """Every command is its own process; only the helpers given to `on_close` remain."""
        releases, self._on_close = self._on_close, []
        for release in releases:
            await release()


async def _communicate_within(
    process: Process, stdin: str | None, timeout: float
) -> tuple[bytes, bytes]:
    """Feed stdin, collect both outputs and wait for the exit; past `timeout` (or when our
    caller is cancelled) kill the command's whole process group before letting go."""
    try:
        with anyio.fail_after(timeout):
            return await _communicate(process, stdin)
    except BaseException:
        _kill_group(process.pid)
        raise


async def _communicate(process: Process, stdin: str | None) -> tuple[bytes, bytes]:
    assert process.stdout is not None and process.stderr is not None
    stdout = bytearray()
    stderr = bytearray()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_drain, process.stdout, stdout)
        tg.start_soon(_drain, process.stderr, stderr)
        if stdin is not None:
            assert process.stdin is not None
            tg.start_soon(_feed, process.stdin, stdin.encode())
        await process.wait()
    return bytes(stdout), bytes(stderr)


async def _drain(stream: ByteReceiveStream, into: bytearray) -> None:
    async for chunk in stream:
        into.extend(chunk)


async def _feed(stream: ByteSendStream, data: bytes) -> None:
    """Write the input and close it, so the command sees end-of-file; a command that exits
    without reading all of it is not an error."""
    try:
        if data:
            await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # all exited already
        os.killpg(pgid, signal.SIGKILL)


def _shown(argv: Sequence[str]) -> str:
    text = shlex.join(argv)
    if len(text) > SHOWN_COMMAND_CHARS:
        text = text[: SHOWN_COMMAND_CHARS - 3] + "..."
    return f"`{text}`"


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")
