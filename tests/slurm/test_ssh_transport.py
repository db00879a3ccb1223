"""The SSH transport against the test cluster's sshd on 127.0.0.1: one connection shared by
concurrent commands, host keys verified, quoting, timeouts, reconnects with backoff."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from dasscod.cluster.base import TransportError
from dasscod.cluster.ssh import SshTarget, SshTransport
from tests.slurm.conftest import LocalCluster


def target(cluster: LocalCluster, **changes: object) -> SshTarget:
    env = cluster.env
    values: dict[str, object] = {
        "host": env["SSH_HOST"], "port": int(env["SSH_PORT"]), "user": env["SSH_USER"],
        "key_file": Path(env["SSH_KEY"]), "known_hosts": Path(env["SSH_KNOWN_HOSTS"]),
        "backoff_s": (0.2, 1.0),
    }
    values.update(changes)
    return SshTarget(**values)  # type: ignore[arg-type]


async def test_commands_share_one_connection_and_keep_their_arguments_intact(
    slurm_cluster: LocalCluster,
) -> None:
    ssh = SshTransport("test", target(slurm_cluster, max_channels=3))
    try:
        tricky = "a b'c\"; rm -rf / $(id) `x`"
        done = await ssh.run(["printf", "%s", tricky])
        assert done.exit_status == 0 and done.stdout == tricky
        echoed = await ssh.run(["cat"], stdin="from stdin\n")
        assert echoed.stdout == "from stdin\n"
        failed = await ssh.run(["sh", "-c", "echo oops >&2; exit 3"])
        assert (failed.exit_status, failed.stderr) == (3, "oops\n")
        results: list[str] = []

        async def one(i: int) -> None:
            results.append((await ssh.run(["echo", str(i)])).stdout.strip())

        async with anyio.create_task_group() as tg:
            for i in range(12):  # more than max_channels and sshd's MaxSessions
                tg.start_soon(one, i)
        assert sorted(results, key=int) == [str(i) for i in range(12)]
        assert (await ssh.run(["sinfo", "-h", "-o", "%P"])).stdout.strip().startswith(
            slurm_cluster.partition
        )
    finally:
        await ssh.close()


async def test_a_command_past_its_timeout_raises(slurm_cluster: LocalCluster) -> None:
    ssh = SshTransport("test", target(slurm_cluster))
    try:
        with pytest.raises(TransportError, match=r"did not finish within 0\.5 s"):
            await ssh.run(["sleep", "10"], timeout=0.5)
        assert (await ssh.run(["true"])).exit_status == 0  # the connection is still usable
    finally:
        await ssh.close()


async def test_an_unknown_host_key_is_refused(
    slurm_cluster: LocalCluster, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ssh = SshTransport("test", target(slurm_cluster, known_hosts=empty))
    with pytest.raises(TransportError, match="cannot connect"):
        await ssh.run(["true"])
    # While backing off it fails at once, without another connection attempt.
    with pytest.raises(TransportError, match="next connection attempt"):
        await ssh.run(["true"])


async def test_environment_values_are_refused(slurm_cluster: LocalCluster) -> None:
    ssh = SshTransport("test", target(slurm_cluster))
    with pytest.raises(ValueError, match="job script"):
        await ssh.run(["true"], env={"DASSCO_TOKEN": "secret"})


async def test_it_reconnects_after_the_connection_drops(
    slurm_cluster: LocalCluster, tmp_path: Path
) -> None:
    ssh = SshTransport("test", target(slurm_cluster))
    try:
        assert (await ssh.run(["true"])).exit_status == 0
        # Kill this connection's sshd session process from the far side.
        with pytest.raises(TransportError, match="connection lost"):
            await ssh.run(["sh", "-c", "kill -9 $PPID; sleep 5"])
        deadline = anyio.current_time() + 10
        while True:
            try:
                assert (await ssh.run(["echo", "back"])).stdout == "back\n"
                break
            except TransportError:
                assert anyio.current_time() < deadline, "no reconnect within 10 s"
                await anyio.sleep(0.2)  # the transport's own backoff decides when it dials
    finally:
        await ssh.close()
