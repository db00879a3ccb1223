"""A tiny stand-in for the daemon's listener: a real HTTP server in a thread that records every
request and answers by rules (an error status, a dropped connection, a hang), else with an
acknowledgement."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACK = {"applied": True, "status": "RUNNING", "detail": None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Request:
    method: str
    path: str  # below the API prefix, e.g. /jobs/started
    authorization: str | None
    body: Any
    at: float


@dataclass
class Rule:
    """Answer requests whose path ends with `path` (any if None) with `action`, `times` times
    (forever if None)."""

    path: str | None
    action: str  # "status", "drop" or "hang"
    status: int = 503
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    times: int | None = 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # dropped connections are on purpose


class StubListener:
    prefix = "/api/v1"

    def __init__(self, port: int = 0, token: str | None = "test-token") -> None:
        self.port = port
        self.token = token
        self.requests: list[Request] = []
        self.rules: list[Rule] = []
        self.gets: dict[str, Any] = {}
        #: Called (in the server's thread) with each request as it arrives.
        self.on_request: Callable[[Request], None] | None = None
        self.release = threading.Event()
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def start(self) -> StubListener:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stub._handle(self)

            def do_POST(self) -> None:
                stub._handle(self)

            def do_PUT(self) -> None:
                stub._handle(self)

        server = _Server(("127.0.0.1", self.port), Handler)
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def answer(
        self,
        path: str | None,
        status: int,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        times: int | None = 1,
    ) -> None:
        with self._changed:
            self.rules.append(Rule(path, "status", status, body, headers or {}, times))

    def drop(self, path: str | None = None, *, times: int | None = 1) -> None:
        with self._changed:
            self.rules.append(Rule(path, "drop", times=times))

    def hang(self, path: str | None = None, *, times: int | None = 1) -> None:
        with self._changed:
            self.rules.append(Rule(path, "hang", times=times))

    def clear_rules(self) -> None:
        with self._changed:
            self.rules.clear()

    def to(self, path: str) -> list[Request]:
        with self._changed:
            return [r for r in self.requests if r.path == path]

    def wait_for(
        self, predicate: Callable[[list[Request]], bool], timeout: float = 10.0
    ) -> list[Request]:
        """Block until `predicate(requests)` holds; fail the test after `timeout` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.requests), timeout):
                raise AssertionError(f"condition not met within {timeout} s: {self.requests}")
            return list(self.requests)

    # ------------------------------------------------------------------ serving

    def _rule_for(self, path: str) -> Rule | None:
        for rule in self.rules:
            if rule.path is not None and not path.endswith(rule.path):
                continue
            if rule.times is not None:
                if rule.times <= 0:
                    continue
                rule.times -= 1
            return rule
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        path = h.path[len(self.prefix) :] if h.path.startswith(self.prefix) else h.path
        request = Request(
            method=h.command,
            path=path,
            authorization=h.headers.get("Authorization"),
            body=_decoded(raw, h.headers.get("Content-Type")),
            at=time.monotonic(),
        )
        if self.on_request is not None:
            self.on_request(request)
        with self._changed:
            self.requests.append(request)
            rule = self._rule_for(path)
            self._changed.notify_all()
        if rule is not None and rule.action == "drop":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if rule is not None and rule.action == "hang":
            self.release.wait(30)
            h.close_connection = True
            return
        if rule is not None:
            self._send(
                h,
                rule.status,
                rule.body if rule.body is not None else {"detail": f"stub answers {rule.status}"},
                rule.headers,
            )
        elif self.token is not None and request.authorization != f"Bearer {self.token}":
            self._send(h, 401, {"detail": "invalid job token"}, {})
        elif h.command == "GET":
            found = self.gets.get(path)
            if found is None:
                self._send(h, 404, {"detail": f"nothing at {path}"}, {})
            else:
                self._send(h, 200, found, {})
        else:
            self._send(h, 200, ACK, {})

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str]) -> None:
        # Bytes are a file (GET /assets/{guid}/files/{name}); everything else is JSON.
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream" if isinstance(body, bytes)
                      else "application/json")
        h.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(data)


def _decoded(raw: bytes, content_type: str | None) -> Any:
    """JSON bodies decoded; files (application/octet-stream) kept as bytes."""
    if not raw:
        return None
    if content_type == "application/octet-stream":
        return raw
    return json.loads(raw)
