"""Per-job callback tokens: an HMAC-signed JWT naming the asset, the job and the attempt.

A job can only speak for itself: a token for one asset or job is refused for another, and a
token of an older attempt is recognised as stale once the job has been retried (the callback
service checks that the attempt is still the live one). A token lives as long as its job
can: the job's time limit, plus the time it may wait in the queue, plus a grace period.

Every token names its signing key in the JWT header (`kid`). The daemon signs with its
current key and verifies with that key or any previous one still configured, so the secret
can be rotated without failing the jobs that are running: give the new secret a new key id,
keep the old one under `security.previous_secrets` until those jobs have ended.
"""

from __future__ import annotations

import functools
import secrets as _secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import jwt

from dasscod.model import utcnow

ALGORITHM = "HS256"
AUDIENCE = "dasscod-callback"
DEFAULT_KID = "k1"


class TokenError(Exception):
    """The token is missing, malformed, expired or not signed by this daemon."""


@dataclass(frozen=True)
class JobClaims:
    asset_guid: str
    job: str
    attempt: int


@dataclass(frozen=True)
class SigningKeys:
    """The current key (id and secret) and older keys that still verify."""

    kid: str
    secret: str = field(repr=False)
    previous: Mapping[str, str] = field(default_factory=dict, repr=False)

    def for_kid(self, kid: str | None) -> str | None:
        if kid is None or kid == self.kid:
            # A token without a key id predates key ids: the current secret.
            return self.secret
        return self.previous.get(kid)


Keys = SigningKeys | str


def signing_keys(keys: Keys) -> SigningKeys:
    return keys if isinstance(keys, SigningKeys) else SigningKeys(DEFAULT_KID, keys)


def issue(keys: Keys, claims: JobClaims, *, ttl_s: float) -> str:
    signing = signing_keys(keys)
    now = utcnow()
    payload = {
        "sub": claims.asset_guid,
        "job": claims.job,
        "att": claims.attempt,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + timedelta(seconds=ttl_s),
        # Tells two tokens of one attempt apart (a resubmission issues a new one).
        "jti": _secrets.token_hex(8),
    }
    return jwt.encode(payload, signing.secret, algorithm=ALGORITHM,
                      headers={"kid": signing.kid})


def verify(keys: Keys, token: str) -> JobClaims:
    return _verified(keys, token)[0]


class Verifier:
    """`verify` that remembers the tokens it accepted. A job sends its one token with every
    call (started, finished, metadata, files), and the listener checks it twice per request
    (at the gate before the body is read, then in the route); the signature and claims of
    a token are checked once instead, which was a third of the listener's CPU per callback.
    Only accepted tokens are remembered, by the whole token (its signature included), so a
    hit is the same string the same keys accepted; its expiry is checked again on every use.
    The keys do not change while the daemon runs (a reload refuses a new secret)."""

    def __init__(self, keys: Keys, *, remembered: int = 4096,
                 clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.clock = clock
        self._accepted = functools.lru_cache(maxsize=remembered)(self._check)

    def __call__(self, token: str) -> JobClaims:
        claims, expires = self._accepted(token)
        if expires <= self.clock():  # as PyJWT decides it: expired at `exp`
            raise TokenError("job token expired")
        return claims

    def _check(self, token: str) -> tuple[JobClaims, float]:
        return _verified(self.keys, token)


def _verified(keys: Keys, token: str) -> tuple[JobClaims, float]:
    """The token's claims and its expiry (UNIX time), or TokenError."""
    signing = signing_keys(keys)
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid job token: {exc}") from exc
    if kid is not None and not isinstance(kid, str):
        raise TokenError("invalid job token: malformed key id")
    secret = signing.for_kid(kid)
    if secret is None:
        raise TokenError(f"invalid job token: unknown signing key {kid!r} (rotated out?)")
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["sub", "job", "att", "exp"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("job token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid job token: {exc}") from exc
    if not isinstance(payload["att"], int) or not isinstance(payload["job"], str):
        raise TokenError("invalid job token: malformed claims")
    claims = JobClaims(asset_guid=str(payload["sub"]), job=payload["job"], attempt=payload["att"])
    return claims, float(payload["exp"])
