"""Tokens: fetched once and shared, renewed before expiry, renewed once on a 401, and bad
credentials fail at once with a message that says which setting to check (and no secret)."""

from __future__ import annotations

import anyio
import pytest

from dasscod.ars import ArsAuthError, ArsClient, ArsNotFound, ArsUnavailable
from dasscod.devstack.ars import ArsSimulator
from dasscod.devstack.ars.app import TOKEN_PATH


async def test_one_token_serves_many_concurrent_calls(sim: ArsSimulator, ars: ArsClient) -> None:
    async def read() -> None:
        with pytest.raises(ArsNotFound):
            await ars.get_asset("unknown")

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(read)
    assert sim.state.tokens_issued == 1
    assert sim.count(TOKEN_PATH) == 1


async def test_token_is_renewed_before_it_expires(sim: ArsSimulator) -> None:
    sim.state.token_ttl_s = 0.4
    async with ArsClient(sim.settings()) as ars:
        with pytest.raises(ArsNotFound):
            await ars.get_asset("unknown")
        # Renewal is due at half the lifetime; wait past the whole injected lifetime.
        await anyio.sleep(0.45)
        with pytest.raises(ArsNotFound):
            await ars.get_asset("unknown")
        assert sim.state.tokens_issued == 2
        # No request was refused: the client renewed before using an expired token.
        assert sim.count("/v1/assetmetadata/unknown") == 2


async def test_a_refused_token_is_renewed_once(sim: ArsSimulator, ars: ArsClient) -> None:
    with pytest.raises(ArsNotFound):
        await ars.get_asset("unknown")
    sim.state.revoke_tokens()  # e.g. Keycloak restarted
    with pytest.raises(ArsNotFound):
        await ars.get_asset("unknown")
    assert sim.state.tokens_issued == 2
    assert sim.count("/v1/assetmetadata/unknown") == 3  # 1 + (401, then the retry)


async def test_a_token_refused_twice_is_an_auth_error(sim: ArsSimulator, ars: ArsClient) -> None:
    sim.state.token_ttl_s = -1  # every token is born expired: ARS refuses them all
    with pytest.raises(ArsAuthError) as caught:
        await ars.get_asset("unknown")
    assert caught.value.status == 401
    assert sim.count("/v1/assetmetadata/unknown") == 2  # refreshed once, not in a loop
    assert sim.state.tokens_issued == 2


async def test_bad_credentials_fail_fast_and_clearly(sim: ArsSimulator) -> None:
    settings = sim.settings(client_secret="wrong-secret-value")
    async with ArsClient(settings) as ars:
        with pytest.raises(ArsAuthError) as caught:
            await ars.get_asset("unknown")
    message = str(caught.value)
    assert "refused client 'dasscod'" in message
    assert "ars.client_secret" in message
    assert "wrong-secret-value" not in message
    assert sim.count(TOKEN_PATH) == 1  # not retried: it will not get better
    assert sim.count("/v1/assetmetadata/unknown") == 0


async def test_token_endpoint_outage_is_retried(sim: ArsSimulator, ars: ArsClient) -> None:
    sim.faults.fail_next = 2  # the first two requests, both to the token endpoint
    with pytest.raises(ArsNotFound):
        await ars.get_asset("unknown")
    assert sim.count(TOKEN_PATH) == 3


def test_settings_never_show_the_secret(sim: ArsSimulator) -> None:
    settings = sim.settings(client_secret="s3cret-value")
    assert "s3cret-value" not in repr(settings)
    assert "s3cret-value" not in settings.model_dump_json()
    assert settings.secret() == "s3cret-value"


def test_secret_from_a_file(sim: ArsSimulator, tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    secret_file = tmp_path / "ars-secret"
    secret_file.write_text("from-file\n")
    settings = sim.settings(client_secret=None, client_secret_file=secret_file)
    assert settings.secret() == "from-file"
    with pytest.raises(ValueError, match="client_secret is not set"):
        sim.settings(client_secret=None)


async def test_callers_waiting_on_a_failing_token_fetch_share_its_failure(
    sim: ArsSimulator,
) -> None:
    settings = sim.settings(retry_attempts=1)  # one try per call: count the fetches exactly
    sim.faults.down_for(3600)
    async with ArsClient(settings) as ars:
        async def read() -> None:
            with pytest.raises(ArsUnavailable):
                await ars.get_asset("unknown")

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(read)
        assert sim.count(TOKEN_PATH) == 1  # one request for twenty callers, not twenty
        sim.faults.down_until = 0.0
        with pytest.raises(ArsNotFound):  # a later call asks again, and gets through
            await ars.get_asset("unknown")
    assert sim.state.tokens_issued == 1
