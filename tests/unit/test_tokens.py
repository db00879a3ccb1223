"""Per-job callback tokens."""

from __future__ import annotations

import base64
import json
import warnings
from datetime import timedelta

import jwt
import pytest

from dasscod.model import utcnow
from dasscod.settings import load_settings
from dasscod.tokens import ALGORITHM, AUDIENCE, JobClaims, TokenError, Verifier, issue, verify

SECRET = "test-token-secret-0123456789abcdef"  # 34 bytes: long enough for HS256
CLAIMS = JobClaims(asset_guid="asset-0001", job="barcode", attempt=2)


def signed(payload: dict[str, object], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def valid_payload(**changes: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "sub": CLAIMS.asset_guid,
        "job": CLAIMS.job,
        "att": CLAIMS.attempt,
        "aud": AUDIENCE,
        "exp": utcnow() + timedelta(minutes=5),
    }
    payload.update(changes)
    return payload


def test_issue_and_verify_round_trip() -> None:
    token = issue(SECRET, CLAIMS, ttl_s=60)
    assert verify(SECRET, token) == CLAIMS


def test_a_hand_made_token_with_the_same_claims_verifies() -> None:
    assert verify(SECRET, signed(valid_payload())) == CLAIMS


def test_the_token_carries_the_documented_claims() -> None:
    token = issue(SECRET, CLAIMS, ttl_s=600)
    payload = jwt.decode(token, SECRET, algorithms=[ALGORITHM], audience=AUDIENCE)
    assert (payload["sub"], payload["job"], payload["att"]) == ("asset-0001", "barcode", 2)
    assert 590 <= payload["exp"] - payload["iat"] <= 600


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = issue("another-secret-0123456789abcdefgh", CLAIMS, ttl_s=60)
    with pytest.raises(TokenError, match="invalid job token"):
        verify(SECRET, token)


def test_an_expired_token_is_refused() -> None:
    token = issue(SECRET, CLAIMS, ttl_s=-1)
    with pytest.raises(TokenError, match="expired"):
        verify(SECRET, token)


def test_a_token_for_another_audience_is_refused() -> None:
    with pytest.raises(TokenError, match="invalid job token"):
        verify(SECRET, signed(valid_payload(aud="some-other-service")))


def test_a_token_without_audience_is_refused() -> None:
    payload = valid_payload()
    del payload["aud"]
    with pytest.raises(TokenError):
        verify(SECRET, signed(payload))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_tampered_token_is_refused() -> None:
    header, _, signature = issue(SECRET, CLAIMS, ttl_s=60).split(".")
    forged = _b64(json.dumps(valid_payload(sub="someone-else", exp=4_102_444_800)).encode())
    with pytest.raises(TokenError, match="invalid job token"):
        verify(SECRET, f"{header}.{forged}.{signature}")


def test_a_token_with_a_flipped_signature_is_refused() -> None:
    token = issue(SECRET, CLAIMS, ttl_s=60)
    head, _, last = token.rpartition(".")
    flipped = ("A" if last[0] != "A" else "B") + last[1:]
    with pytest.raises(TokenError):
        verify(SECRET, f"{head}.{flipped}")


def test_an_unsigned_token_is_refused() -> None:
    # PyJWT's "none" algorithm ignores the key; an empty string satisfies its type hints.
    unsigned = jwt.encode(valid_payload(), key="", algorithm="none")
    with pytest.raises(TokenError):
        verify(SECRET, unsigned)


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "Bearer x.y.z"])
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(TokenError):
        verify(SECRET, token)


@pytest.mark.parametrize("missing", ["sub", "job", "att", "exp"])
def test_a_token_missing_a_claim_is_refused(missing: str) -> None:
    payload = valid_payload()
    del payload[missing]
    with pytest.raises(TokenError):
        verify(SECRET, signed(payload))


@pytest.mark.parametrize(("claim", "value"), [("att", "2"), ("att", 2.0), ("job", 7)])
def test_malformed_claims_are_refused(claim: str, value: object) -> None:
    with pytest.raises(TokenError, match="malformed claims"):
        verify(SECRET, signed(valid_payload(**{claim: value})))


def test_every_secret_the_settings_accept_is_long_enough_for_hs256(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DASSCOD_CONFIG", raising=False)
    monkeypatch.setenv("DASSCOD_SECURITY__TOKEN_SECRET", "x" * 16)
    try:
        secret = load_settings().security.secret()
    except ValueError:
        return  # refused by the settings: fine
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verify(secret, issue(secret, CLAIMS, ttl_s=60))


# ------------------------------------------------------------------ the listener's verifier


def test_the_verifier_accepts_a_token_once_checked_until_it_expires() -> None:
    now = [utcnow().timestamp()]
    verifier = Verifier(SECRET, clock=lambda: now[0])
    token = issue(SECRET, CLAIMS, ttl_s=60)
    assert verifier(token) == CLAIMS
    assert verifier(token) == CLAIMS  # remembered
    now[0] += 61
    with pytest.raises(TokenError, match="expired"):
        verifier(token)


def test_the_verifier_refuses_what_verify_refuses_even_beside_a_remembered_token() -> None:
    verifier = Verifier(SECRET)
    token = issue(SECRET, CLAIMS, ttl_s=60)
    assert verifier(token) == CLAIMS
    head, payload, signature = token.split(".")
    other = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    other["sub"] = "asset-0002"
    forged = base64.urlsafe_b64encode(json.dumps(other).encode()).decode().rstrip("=")
    with pytest.raises(TokenError):
        verifier(f"{head}.{forged}.{signature}")
    with pytest.raises(TokenError):
        verifier(issue("another-secret-0123456789abcdefghij", CLAIMS, ttl_s=60))
    with pytest.raises(TokenError):
        Verifier("another-secret-0123456789abcdefghij")(token)
