"""The listener's own metrics: every request timed into `dasscod_callback_seconds` by route
template (never the concrete path, which holds guids) and status code; and `GET /metrics`."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dasscod import metrics


class RequestTimer:
    """Pure ASGI middleware (no body buffering, so file transfers stream as before)."""

    def __init__(self, app: ASGIApp, *, router_app: FastAPI) -> None:
        self.app = app
        self.router_app = router_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        code = 500  # what the client gets if the app raises before answering

        async def sending(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            metrics.CALLBACK_SECONDS.labels(
                route=self._route(scope), code=str(code)
            ).observe(time.monotonic() - started)

    def _route(self, scope: Scope) -> str:
        route: Any = scope.get("route")
        if route is not None and hasattr(route, "path"):
            return str(route.path)
        for candidate in self.router_app.router.routes:
            match, _ = candidate.matches(scope)
            if match is Match.FULL and hasattr(candidate, "path"):
                return str(candidate.path)
        return "unmatched"


def install_metrics(app: FastAPI, *, route: bool) -> None:
    """Time every request; with `route`, also serve `GET /metrics` on this app."""
    app.add_middleware(RequestTimer, router_app=app)
    if route:
        add_metrics_route(app)


def add_metrics_route(app: FastAPI) -> None:
    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)


def metrics_app() -> FastAPI:
    """The app of the separate metrics port (`metrics.port`): `/metrics` and nothing else."""
    app = FastAPI(title="dasscod metrics", openapi_url=None, docs_url=None, redoc_url=None)
    add_metrics_route(app)
    return app
