"""Run the simulator over real HTTP inside the caller's event loop.

`ars_simulator()` binds 127.0.0.1 on a free port (the socket is bound before uvicorn starts, so
there is no window in which another process can take the port), serves with uvicorn in a task
of the running loop, and yields an `ArsSimulator` handle: the URLs, `ArsSettings` for a client,
and the live `state`, `faults` and request log to steer and inspect it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from dasscod.ars.settings import ArsSettings
from dasscod.devstack.ars.app import ARS_PREFIX, PROXY_PREFIX, TOKEN_PATH, build_app
from dasscod.devstack.ars.faults import Faults, RequestRecord
from dasscod.devstack.ars.state import SimState

DEFAULT_CLIENT_ID = "dasscod"
DEFAULT_CLIENT_SECRET = "simulator-secret"  # a test double's fixed credential


class _InLoopServer(uvicorn.Server):
    """uvicorn without signal handlers: the process (pytest, the demo) owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class ArsSimulator:
    root_url: str
    state: SimState
    faults: Faults
    requests: list[RequestRecord] = field(default_factory=list)
    token_ttl_s: float = 300.0
    erda_delay_s: float = 0.05

    @property
    def base_url(self) -> str:
        return self.root_url + ARS_PREFIX

    @property
    def file_proxy_url(self) -> str:
        return self.root_url + PROXY_PREFIX

    @property
    def token_url(self) -> str:
        return self.root_url + TOKEN_PATH

    def settings(self, **overrides: Any) -> ArsSettings:
        """Client settings for this simulator: its URLs, its credentials, quick retries."""
        values: dict[str, Any] = {
            "base_url": self.base_url,
            "file_proxy_url": self.file_proxy_url,
            "token_url": self.token_url,
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
            "timeout_s": 5.0,
            "retry_attempts": 4,
            "retry_timeout_s": 10.0,
            "retry_wait_initial_s": 0.01,
            "retry_wait_max_s": 0.05,
            "retry_wait_jitter_s": 0.01,
            "allow_http": True,  # the simulator serves plain http on 127.0.0.1
        }
        values.update(overrides)
        return ArsSettings.model_validate(values)

    def count(self, path_suffix: str = "", method: str | None = None) -> int:
        """Requests that reached the simulator (faulted ones included) whose path ends so."""
        return sum(
            1
            for r in self.requests
            if r.path.endswith(path_suffix) and (method is None or r.method == method)
        )

    def reset(self) -> None:
        """Back to a fresh simulator: no state, no faults, an empty request log."""
        self.state.clear(token_ttl_s=self.token_ttl_s, erda_delay_s=self.erda_delay_s)
        self.faults.update({k: v for k, v in Faults().__dict__.items() if not k.startswith("_")})
        self.requests.clear()


@contextlib.asynccontextmanager
async def ars_simulator(
    *,
    token_ttl_s: float = 300.0,
    erda_delay_s: float = 0.05,
    clients: dict[str, str] | None = None,
    startup_timeout_s: float = 10.0,
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[ArsSimulator]:
    """Serve the simulator on `host`:`port` (0: a free port) until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this. Without it, a response written as headers then body
    # stalls ~40 ms on Nagle + delayed ACK (uvicorn serving a pre-bound socket does not set it).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    root = f"http://{host}:{port}"
    state = SimState(
        clients=clients if clients is not None else {DEFAULT_CLIENT_ID: DEFAULT_CLIENT_SECRET},
        token_ttl_s=token_ttl_s,
        hostname=root + PROXY_PREFIX,
    )
    state.erda.delay_s = erda_delay_s
    sim = ArsSimulator(
        root_url=root,
        state=state,
        faults=Faults(),
        token_ttl_s=token_ttl_s,
        erda_delay_s=erda_delay_s,
    )
    config = uvicorn.Config(
        build_app(state, sim.faults, sim.requests),
        log_level="critical",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = _InLoopServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if task.done():
                task.result()  # raises the startup error
                raise RuntimeError("ARS simulator stopped during startup")
            if time.monotonic() > deadline:
                raise TimeoutError("ARS simulator did not start")
            await asyncio.sleep(0.005)
        yield sim
    finally:
        state.cancel_pending()
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=5)
        except TimeoutError:
            server.force_exit = True
            task.cancel()
        sock.close()
