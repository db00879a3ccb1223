"""LocalTransport against real processes."""

from __future__ import annotations

from pathlib import Path

import anyio
import psutil
import pytest

from dasscod.cluster.base import TransportError
from dasscod.cluster.local import LocalTransport


@pytest.fixture
def transport() -> LocalTransport:
    return LocalTransport("here")


async def test_runs_a_command_and_returns_its_result(transport: LocalTransport) -> None:
    result = await transport.run(["sh", "-c", 'echo out; echo err >&2; exit 3'])
    assert (result.exit_status, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert transport.name == "here"


async def test_arguments_are_never_interpreted_by_a_shell(transport: LocalTransport) -> None:
    result = await transport.run(["echo", "$HOME; rm -rf /", "`x`"])
    assert result.stdout == "$HOME; rm -rf / `x`\n"


async def test_feeds_stdin(transport: LocalTransport) -> None:
    result = await transport.run(["cat"], stdin="hello\nworld\n")
    assert result.stdout == "hello\nworld\n"


async def test_stdin_the_command_does_not_read_is_no_error(transport: LocalTransport) -> None:
    result = await transport.run(["true"], stdin="x" * 1_000_000)
    assert result.exit_status == 0


async def test_without_stdin_the_command_reads_end_of_file(transport: LocalTransport) -> None:
    result = await transport.run(["cat"], timeout=5)
    assert result.stdout == ""


async def test_env_adds_to_the_inherited_environment(transport: LocalTransport) -> None:
    result = await transport.run(["sh", "-c", 'echo "$DASSCO_X"'], env={"DASSCO_X": "y z"})
    assert result.stdout == "y z\n"  # and `sh` was still found on the inherited PATH


async def test_timeout_kills_everything_the_command_started_and_raises(
    transport: LocalTransport, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    argv = ["sh", "-c", 'sleep 30 & echo $! > "$1"; wait', "sh", str(pid_file)]
    with anyio.fail_after(5):
        with pytest.raises(TransportError) as err:
            await transport.run(argv, timeout=0.5)
    assert "within 0.5 s" in str(err.value)
    assert "sleep 30" in str(err.value)
    background = int(pid_file.read_text())
    with anyio.fail_after(5):
        while True:
            if not _alive(background):
                break
            await anyio.sleep(0.02)


async def test_missing_program_raises(transport: LocalTransport) -> None:
    with pytest.raises(TransportError) as err:
        await transport.run(["dassco-no-such-program", "arg"])
    assert "dassco-no-such-program" in str(err.value)
    assert "here" in str(err.value)


async def test_empty_command_raises(transport: LocalTransport) -> None:
    with pytest.raises(TransportError):
        await transport.run([])


async def test_close_is_harmless(transport: LocalTransport) -> None:
    await transport.close()
    assert (await transport.run(["true"])).exit_status == 0


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
