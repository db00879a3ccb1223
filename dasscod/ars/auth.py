"""OAuth2 client-credentials tokens for ARS, as an httpx auth flow.

Why not a library: the whole grant is one form POST, and what matters is around it — one
token shared by every concurrent call, fetched once (a lock, not a stampede), renewed *before*
it expires, and renewed once more when ARS answers 401 anyway (revoked, clock skew, Keycloak
restart). An `httpx.Auth` flow can send the request a second time after a 401, which is exactly
that rule, with no extra state in the client.

Tokens and the client secret are never logged or put into exception messages.
"""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass

import anyio
import httpx

from dasscod.ars.errors import ArsAuthError, ArsError, ArsUnavailable, error_from_response
from dasscod.log import get_logger

log = get_logger(__name__)


@dataclass
class _Token:
    value: str
    renew_at: float  # monotonic seconds


class ClientCredentials:
    """Fetches and caches one bearer token from a Keycloak-style token endpoint."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        leeway_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._leeway_s = leeway_s
        self._clock = clock
        self._token: _Token | None = None
        self._lock = anyio.Lock()
        #: Fetches begun so far, and the last one's failure with its number: callers that
        #: waited for a fetch which then failed share its answer instead of asking again at
        #: once (an unreachable token endpoint gets one request per wave of callers).
        self._fetches = 0
        self._failure: tuple[int, ArsError] | None = None
        #: Tokens fetched so far (metrics and tests).
        self.fetched = 0

    async def token(self) -> str:
        """A token valid for a while yet; fetched at most once by concurrent callers."""
        arrived = self._fetches
        async with self._lock:
            current = self._token
            if current is not None and self._clock() < current.renew_at:
                return current.value
            if self._failure is not None and self._failure[0] > arrived:
                raise copy.copy(self._failure[1])  # failed while we waited for it
            self._fetches += 1
            try:
                self._token = await self._fetch()
            except ArsError as exc:
                self._failure = (self._fetches, exc)
                raise
            self._failure = None
            return self._token.value

    async def invalidate(self, value: str) -> None:
        """Forget `value` after ARS refused it, unless another caller already replaced it."""
        async with self._lock:
            if self._token is not None and self._token.value == value:
                self._token = None

    async def _fetch(self) -> _Token:
        started = self._clock()
        try:
            response = await self._http.post(
                self._token_url,
                data={
                    "grant_type": "client_credentials",
                    "client_id": self._client_id,
                    "client_secret": self._client_secret,
                },
                headers={"Accept": "application/json"},
            )
        except httpx.TransportError as exc:
            raise ArsUnavailable(
                f"token endpoint unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code in (400, 401, 403):
            error = error_from_response(response, what="token request")
            raise ArsAuthError(
                f"token endpoint refused client '{self._client_id}': "
                f"{error.message.removeprefix('token request: ')}; "
                "check ars.client_id and ars.client_secret",
                status=response.status_code,
                error_code=error.error_code,
            )
        if response.is_error:
            raise error_from_response(response, what="token request")
        try:
            payload = response.json()
            value = str(payload["access_token"])
            lifetime = float(payload.get("expires_in", 60))
        except (ValueError, KeyError, TypeError) as exc:
            raise ArsAuthError(
                "token endpoint answered without an access_token", status=response.status_code
            ) from exc
        self.fetched += 1
        # Renew early: `leeway_s` before expiry, but never later than half the lifetime, so a
        # short-lived token (tests, strict realms) is still renewed before it runs out.
        early = min(self._leeway_s, lifetime / 2)
        log.debug("ars token fetched", expires_in=lifetime, client_id=self._client_id)
        return _Token(value=value, renew_at=started + lifetime - early)


class BearerAuth(httpx.Auth):
    """Adds the bearer token; on a 401 renews it and sends the request once more."""

    def __init__(self, credentials: ClientCredentials) -> None:
        self._credentials = credentials

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError("ARS auth is async only")
        yield request  # pragma: no cover  (makes this a generator)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._credentials.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            await response.aread()
            await self._credentials.invalidate(token)
            log.info("ars refused the token, renewing once", path=request.url.path)
            token = await self._credentials.token()
            request.headers["Authorization"] = f"Bearer {token}"
            yield request
