"""Per-job callback tokens: an HMAC-signed JWT naming the asset, the job and the attempt.

A job can only speak for itself: a token for one asset or job is refused for another, and a
token of an older attempt is recognised as stale once the job has been retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import jwt

from dasscod.model import utcnow

ALGORITHM = "HS256"
AUDIENCE = "dasscod-callback"


class TokenError(Exception):
    """The token is missing, malformed, expired or not signed by this daemon."""


@dataclass(frozen=True)
class JobClaims:
    asset_guid: str
    job: str
    attempt: int


def issue(secret: str, claims: JobClaims, *, ttl_s: int) -> str:
    now = utcnow()
    payload = {
        "sub": claims.asset_guid,
        "job": claims.job,
        "att": claims.attempt,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + timedelta(seconds=ttl_s),
    }
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str) -> JobClaims:
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
    return JobClaims(asset_guid=str(payload["sub"]), job=payload["job"], attempt=payload["att"])
