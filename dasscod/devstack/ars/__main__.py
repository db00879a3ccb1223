"""The ARS simulator as a process of its own, for the demo and for trying the daemon by hand.

    python -m dasscod.devstack.ars --port 0 --client-id dasscod --client-secret S

serves until SIGTERM or SIGINT. Once it listens it prints one line to stdout,
`ready {"base_url": ..., "file_proxy_url": ..., "token_url": ...}` (JSON after the word), so a
parent that asked for port 0 learns the port. The secret may come from the environment
(`ARS_SIMULATOR_CLIENT_SECRET`) instead of the command line, where other users can read it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from dasscod.devstack.ars.server import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, ars_simulator


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dasscod.devstack.ars",
                                     description="Serve the ARS simulator until SIGTERM.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (default)")
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    parser.add_argument(
        "--client-secret",
        default=os.environ.get("ARS_SIMULATOR_CLIENT_SECRET", DEFAULT_CLIENT_SECRET),
    )
    parser.add_argument("--erda-delay-s", type=float, default=0.05,
                        help="seconds from synchronize to COMPLETED")
    parser.add_argument("--token-ttl-s", type=float, default=300.0)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with ars_simulator(
        host=args.host,
        port=args.port,
        clients={args.client_id: args.client_secret},
        erda_delay_s=args.erda_delay_s,
        token_ttl_s=args.token_ttl_s,
    ) as sim:
        urls = {"base_url": sim.base_url, "file_proxy_url": sim.file_proxy_url,
                "token_url": sim.token_url}
        print("ready " + json.dumps(urls), flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(serve(parse(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
