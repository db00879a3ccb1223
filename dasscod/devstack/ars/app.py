"""The simulator's HTTP surface: a Keycloak token endpoint, the asset service and the file
proxy, with the paths, verbs, parameters, bodies and status codes the real ones use, plus a
small admin API for tests that drive the simulator from outside the process.

Mounted under three roots, as in a deployment: `/realms/<realm>/...` (Keycloak),
`/ars/api` (asset service) and `/file_proxy/api` (file proxy).
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qs, unquote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from dasscod.devstack.ars.faults import ADMIN_PREFIX, FaultMiddleware, Faults, RequestRecord
from dasscod.devstack.ars.state import SimError, SimState

REALM = "dassco"
TOKEN_PATH = f"/realms/{REALM}/protocol/openid-connect/token"
ARS_PREFIX = "/ars/api"
PROXY_PREFIX = "/file_proxy/api"


def _sim_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, SimError)
    if exc.status == 401 and exc.body == {}:  # a gateway's 401: no body, a challenge header
        challenge = 'Bearer error="invalid_token"'
        return Response(status_code=401, headers={"WWW-Authenticate": challenge})
    return JSONResponse(exc.body, status_code=exc.status)


def build_app(state: SimState, faults: Faults, requests: list[RequestRecord]) -> FastAPI:
    app = FastAPI(title="ARS simulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(SimError, _sim_error)

    def bearer(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not state.token_valid(token):
            raise SimError(401, "UNAUTHORIZED", "invalid or expired token", body={})

    auth = [Depends(bearer)]

    # ---------------------------------------------------------------- Keycloak

    @app.post(TOKEN_PATH)
    async def token(request: Request) -> JSONResponse:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            decoded = base64.b64decode(basic[6:]).decode()
            client_id, _, secret = decoded.partition(":")
            client_id, secret = unquote(client_id), unquote(secret)
        if form.get("grant_type") != "client_credentials":
            raise SimError(
                400,
                "unsupported_grant_type",
                "unsupported grant type",
                body={"error": "unsupported_grant_type"},
            )
        return JSONResponse(state.issue_token(client_id, secret))

    # ---------------------------------------------------------------- asset service

    @app.post(f"{ARS_PREFIX}/v1/assetmetadata", dependencies=auth)
    async def create_asset(request: Request, allocation_mb: int | None = None) -> JSONResponse:
        return JSONResponse(state.create_asset(await _json(request), allocation_mb))

    @app.get(f"{ARS_PREFIX}/v1/assetmetadata/{{guid}}", dependencies=auth)
    async def get_asset(guid: str) -> Response:
        found = state.get_asset(guid)
        return Response(status_code=204) if found is None else JSONResponse(found)

    @app.put(f"{ARS_PREFIX}/v1/assetmetadata/{{guid}}", dependencies=auth)
    async def update_asset(guid: str, request: Request) -> JSONResponse:
        return JSONResponse(state.update_asset(guid, await _json(request)))

    @app.delete(f"{ARS_PREFIX}/v1/assetmetadata/{{guid}}", dependencies=auth)
    async def delete_asset(guid: str) -> Response:
        state.delete_asset(guid)
        return Response(status_code=204)

    @app.put(f"{ARS_PREFIX}/v1/assetmetadata/{{guid}}/setstatus", dependencies=auth)
    async def set_status(
        guid: str, newStatus: str | None = None, errorMessage: str | None = None
    ) -> Response:
        state.set_status(guid, newStatus, errorMessage)
        return Response(status_code=204)

    @app.post(f"{ARS_PREFIX}/v1/assetmetadata/{{guid}}/complete", dependencies=auth)
    async def complete(guid: str, request: Request) -> Response:
        state.complete(guid, await _json(request))
        return Response(status_code=204)

    @app.put(f"{ARS_PREFIX}/v1/assetmetadata/{{guid}}/unlock", dependencies=auth)
    async def unlock(guid: str) -> Response:
        state.unlock(guid)
        return Response(status_code=204)

    @app.get(f"{ARS_PREFIX}/v1/assetmetadata/{{guid}}/events", dependencies=auth)
    async def events(guid: str) -> JSONResponse:
        return JSONResponse(state.events(guid))

    @app.get(f"{ARS_PREFIX}/v1/assets/status/{{guid}}", dependencies=auth)
    async def asset_status(guid: str) -> JSONResponse:
        return JSONResponse(state.status(guid))

    # ---------------------------------------------------------------- file proxy

    @app.post(f"{PROXY_PREFIX}/shares/assets/{{guid}}/createShare", dependencies=auth)
    async def create_share(guid: str, request: Request) -> JSONResponse:
        return JSONResponse(state.create_share(guid, await _json(request)))

    @app.delete(f"{PROXY_PREFIX}/shares/assets/{{guid}}/deleteShare", dependencies=auth)
    async def delete_share(guid: str) -> JSONResponse:
        return JSONResponse(state.delete_share(guid))

    @app.post(f"{PROXY_PREFIX}/shares/assets/{{guid}}/changeAllocation", dependencies=auth)
    async def change_allocation(guid: str, request: Request) -> JSONResponse:
        body = await _json(request)
        return JSONResponse(state.change_allocation(guid, int(body.get("new_allocation_mb", 0))))

    @app.post(f"{PROXY_PREFIX}/shares/assets/{{guid}}/synchronize", dependencies=auth)
    async def synchronize(
        guid: str, workstation: str | None = None, pipeline: str | None = None
    ) -> Response:
        state.synchronize(guid, workstation, pipeline)
        return Response(status_code=204)

    @app.get(f"{PROXY_PREFIX}/assetfiles/listfiles/{{guid}}", dependencies=auth)
    async def list_erda(guid: str) -> JSONResponse:
        return JSONResponse(state.erda_files(guid))

    @app.put(
        f"{PROXY_PREFIX}/assetfiles/{{institution}}/{{collection}}/{{guid}}/{{path:path}}",
        dependencies=auth,
    )
    async def upload(
        institution: str,
        collection: str,
        guid: str,
        path: str,
        request: Request,
        crc: int = 0,
        file_size_mb: int = 0,
    ) -> JSONResponse:
        status, body = state.upload(
            institution, collection, guid, path, await request.body(), crc, file_size_mb
        )
        return JSONResponse(body, status_code=status)

    @app.get(
        f"{PROXY_PREFIX}/assetfiles/{{institution}}/{{collection}}/{{guid}}/{{path:path}}",
        dependencies=auth,
    )
    async def download(institution: str, collection: str, guid: str, path: str) -> Response:
        if not path:
            return JSONResponse(state.share_links(institution, collection, guid))
        data = state.download(institution, collection, guid, path)
        return Response(data, media_type="application/octet-stream")

    # ---------------------------------------------------------------- admin (tests)

    @app.post(f"{ADMIN_PREFIX}/faults")
    async def set_faults(request: Request) -> JSONResponse:
        try:
            faults.update(await _json(request))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"ok": True})

    @app.post(f"{ADMIN_PREFIX}/erda")
    async def set_erda(request: Request) -> JSONResponse:
        body = await _json(request)
        state.erda.delay_s = float(body.get("delay_s", state.erda.delay_s))
        state.erda.fail_next = int(body.get("fail_next", state.erda.fail_next))
        for knob in ("fail_guids", "stall_guids", "lag_guids"):
            if knob in body:
                setattr(state.erda, knob, {str(g) for g in body[knob]})
        return JSONResponse({"ok": True})

    @app.post(f"{ADMIN_PREFIX}/revoke_tokens")
    async def revoke() -> JSONResponse:
        state.revoke_tokens()
        return JSONResponse({"ok": True})

    @app.get(f"{ADMIN_PREFIX}/requests")
    async def request_log() -> JSONResponse:
        return JSONResponse([r.__dict__ for r in requests])

    app.add_middleware(FaultMiddleware, faults=faults, log=requests)
    return app


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise SimError(400, "BAD_REQUEST", "Body is not JSON") from None
    if not isinstance(body, dict):
        raise SimError(400, "BAD_REQUEST", "Body must be a JSON object")
    return body
