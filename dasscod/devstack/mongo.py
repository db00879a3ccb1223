"""Start a MongoDB-compatible test server (SecantusDB, GPL-2.0) as a separate process.

SecantusDB is a dev/demo extra: it is run as its own program (`secantusd-py`), never imported,
so the daemon's runtime stays free of it. Production points `mongo.uri` at MongoDB >= 6.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

TEST_URI_ENV = "DASSCOD_TEST_MONGO_URI"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_program() -> str:
    local = Path(sys.executable).with_name("secantusd-py")
    if local.exists():
        return str(local)
    found = shutil.which("secantusd-py")
    if found is None:
        raise RuntimeError(
            "secantusd-py not found: install the dev extra (pip install -e '.[dev]') "
            f"or set {TEST_URI_ENV} to a running MongoDB"
        )
    return found


def wait_until_up(uri: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client: MongoClient[dict[str, object]]
            with MongoClient(uri, serverSelectionTimeoutMS=500) as client:
                client.admin.command("ping")
                return
        except PyMongoError as exc:
            last = exc
            time.sleep(0.2)
    raise RuntimeError(f"test MongoDB at {uri} did not answer within {timeout_s:.0f} s: {last}")


@contextmanager
def mongo_server(data_dir: Path, *, log_file: Path | None = None) -> Iterator[str]:
    """Yield the URI of a running server: `$DASSCOD_TEST_MONGO_URI` if set, else a fresh
    SecantusDB on a free loopback port, stopped (and its process reaped) on exit."""
    if os.environ.get(TEST_URI_ENV):
        uri = os.environ[TEST_URI_ENV]
        wait_until_up(uri)
        yield uri
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (log_file or data_dir / "secantusd.log").open("ab")
    proc = subprocess.Popen(
        [
            _server_program(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(data_dir / "wt"),
            "--log-level",
            "WARNING",
            "--cache-size",
            "256M",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=data_dir,
    )
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    try:
        try:
            wait_until_up(uri)
        except RuntimeError:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"secantusd-py exited with {proc.returncode}; see {log.name}"
                ) from None
            raise
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
