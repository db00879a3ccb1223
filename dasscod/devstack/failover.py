"""Two daemons on one database, as production runs a leader and a standby: the pieces the
fail-over tests and `failover_s` bench share.

- `ReadyProxy`: what a load balancer in front of the two does: jobs call back to one address;
  each connection goes to the daemon whose /readyz says "ready" (the leader).
- `python -m dasscod.devstack.failover WRITES.jsonl --config FILE`: `dasscod run` with every
  write command it sends logged (monotonic time, command, collection), to show what a paused
  leader wrote after it resumed."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import anyio
import httpx
from anyio.abc import ByteStream, SocketStream
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

WRITE_COMMANDS = frozenset({"insert", "update", "delete", "findAndModify", "createIndexes",
                            "dropIndexes"})


class ReadyProxy:
    """Forwards each TCP connection to the first backend whose /readyz answered 200."""

    def __init__(self, backends: Sequence[int], check_s: float = 0.2) -> None:
        self.backends = list(backends)
        self.check_s = check_s
        self.leader: int | None = None
        self.port = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(self._check)
            task_status.started()
            await listener.serve(self._forward)

    async def ready(self, port: int) -> str | None:
        """The /readyz status of the daemon on `port`, or None when it does not answer."""
        try:
            async with httpx.AsyncClient(timeout=0.5) as client:
                answer = await client.get(f"http://127.0.0.1:{port}/readyz")
            return str(answer.json().get("status"))
        except (httpx.HTTPError, ValueError):
            return None

    async def _check(self) -> None:
        while True:
            leader = None
            for port in self.backends:
                if await self.ready(port) == "ready":
                    leader = port
                    break
            self.leader = leader
            await anyio.sleep(self.check_s)

    async def _forward(self, client: SocketStream) -> None:
        async with client:
            if self.leader is None:
                return  # refused: the job's client retries
            try:
                upstream = await anyio.connect_tcp("127.0.0.1", self.leader)
            except OSError:
                return
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(_pump, client, upstream)
                tg.start_soon(_pump, upstream, client)


async def _pump(source: ByteStream, sink: ByteStream) -> None:
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        async for chunk in source:
            await sink.send(chunk)
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await sink.send_eof()


class WriteLog(CommandListener):
    """One JSON line per write command, written before the command is sent."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name in WRITE_COMMANDS:
            collection = event.command.get(event.command_name)
            self.out.write(json.dumps({"t": time.monotonic(), "command": event.command_name,
                                       "collection": str(collection)}) + "\n")
            self.out.flush()

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


def writes_after(path: Path, t: float, *, ignore: frozenset[str] = frozenset({"lease"})
                 ) -> list[dict[str, object]]:
    """The write commands logged at `path` after monotonic time `t`, other than to `ignore`."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if float(r["t"]) > t and r["collection"] not in ignore]


def main() -> None:
    from dasscod.log import configure_logging
    from dasscod.settings import load_settings
    from dasscod.wiring import build_daemon

    writes, flag, config = sys.argv[1:4]
    assert flag == "--config"
    settings = load_settings(Path(config))
    configure_logging(settings.log_level, settings.log_format)

    async def run(out: TextIO) -> None:
        daemon = build_daemon(settings, command_listeners=[WriteLog(out)], config_path=Path(config))
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.handle_signals)
            await daemon.run()
            tg.cancel_scope.cancel()

    with Path(writes).open("a", encoding="utf-8") as out:
        anyio.run(run, out)


if __name__ == "__main__":
    main()
