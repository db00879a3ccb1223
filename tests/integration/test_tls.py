"""TLS: the listener serves HTTPS with `listener.tls_certfile`/`tls_keyfile`, and dassco-hpc
(standard library only) checks its certificate against the CA bundle in $DASSCO_CA_BUNDLE.
A throwaway CA (trustme) signs the certificate. Also: the interactive API pages are off by
default, and ARS URLs must be https unless explicitly allowed."""

from __future__ import annotations

import ssl
from pathlib import Path

import anyio
import httpx
import pytest
import trustme
from dassco_hpc.client import CallbackClient
from dassco_hpc.errors import CallbackRejected, ConfigError

from dasscod.ars.settings import ArsSettings
from dasscod.listener.app import create_app
from dasscod.settings import ListenerSettings
from dasscod.store import Stores
from dasscod.tokens import JobClaims, issue
from tests.conftest import make_metadata, make_track
from tests.serving import serving

SECRET = "tls-test-secret-0123456789abcdefghij"
GUID = "tls-asset"


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    for extra in cert.cert_chain_pems[1:]:
        with paths["cert"].open("ab") as out:
            out.write(extra.bytes())
    return paths


def client(port: int, **changes: object) -> CallbackClient:
    token = issue(SECRET, JobClaims(GUID, "load", 1), ttl_s=60)
    return CallbackClient(base_url=f"https://127.0.0.1:{port}/api/v1", token=token,
                          deadline_s=5, timeout_s=5, **changes)  # type: ignore[arg-type]


async def test_dassco_hpc_talks_https_checked_against_the_ca_bundle(
    stores: Stores, pki: dict[str, Path]
) -> None:
    await stores.track.insert(make_track(GUID))
    await stores.metadata.insert(make_metadata(GUID))
    app = create_app(stores, SECRET)
    async with serving(app, tls_certfile=pki["cert"], tls_keyfile=pki["key"]) as port:
        trusting = client(port, ca_bundle=str(pki["ca"]))
        metadata = await anyio.to_thread.run_sync(trusting.get, f"assets/{GUID}/metadata")
        assert metadata["asset_guid"] == GUID
        # Without the CA the certificate is refused at once: no retries, no data sent.
        with pytest.raises(CallbackRejected, match="CERTIFICATE_VERIFY_FAILED"):
            await anyio.to_thread.run_sync(client(port).get, f"assets/{GUID}/metadata")
        # Plain HTTP to the HTTPS port gets no answer from the API.
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{port}/healthz")
        context = ssl.create_default_context(cafile=str(pki["ca"]))
        async with httpx.AsyncClient(verify=context) as verified:
            assert (await verified.get(f"https://127.0.0.1:{port}/healthz")).status_code == 200


def test_the_ca_bundle_comes_from_the_environment(tmp_path: Path) -> None:
    env = {"DASSCO_CALLBACK_URL": "https://x/api/v1", "DASSCO_TOKEN": "t"}
    assert CallbackClient.from_env(env).ca_bundle is None
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    assert CallbackClient.from_env({**env, "DASSCO_CA_BUNDLE": str(ca)}).ca_bundle == str(ca)
    with pytest.raises(ConfigError, match="DASSCO_CA_BUNDLE"):
        CallbackClient.from_env({**env, "DASSCO_CA_BUNDLE": str(tmp_path / "missing.pem")})


def test_tls_settings_go_in_pairs_and_turn_the_callback_url_to_https(
    pki: dict[str, Path]
) -> None:
    with pytest.raises(ValueError, match="go together"):
        ListenerSettings(tls_certfile=pki["cert"])
    with pytest.raises(ValueError, match="does not exist"):
        ListenerSettings(tls_certfile=pki["cert"], tls_keyfile=pki["key"].with_name("nope"))
    tls = ListenerSettings(host="10.0.0.1", port=8443, tls_certfile=pki["cert"],
                           tls_keyfile=pki["key"])
    assert tls.callback_base == "https://10.0.0.1:8443/api/v1"


async def test_the_api_pages_are_off_unless_enabled(stores: Stores) -> None:
    for docs, expected in ((False, 404), (True, 200)):
        app = create_app(stores, SECRET, docs=docs)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            assert (await c.get("/docs")).status_code == expected
            assert (await c.get("/redoc")).status_code == expected
            assert (await c.get("/openapi.json")).status_code == 200


def test_http_ars_urls_are_refused_unless_allowed() -> None:
    table = {"base_url": "http://ars.example.org/api", "client_id": "d", "client_secret": "s",
             "token_url": "https://idp.example.org/token"}
    with pytest.raises(ValueError, match=r"ars\.base_url must be an https:// URL"):
        ArsSettings.model_validate(table)
    with pytest.raises(ValueError, match=r"ars\.token_url must be an https:// URL"):
        ArsSettings.model_validate({**table, "base_url": "https://a/api",
                                    "token_url": "http://idp/token"})
    assert ArsSettings.model_validate({**table, "allow_http": True}).base_url.startswith("http:")
    assert ArsSettings.model_validate({**table, "base_url": "https://a/api"})
