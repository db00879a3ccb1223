"""`ArsSettings`: the `[ars]` section of the Settings tree (to be mounted in `dasscod.settings`).

It lives here, not in `dasscod/settings.py`, so the ARS package can be used and tested on its
own; `dasscod.settings` imports it, never the other way round (no import cycle). The secret
comes from a systemd credential (`ars.client_secret`), the environment
(`DASSCOD_ARS__CLIENT_SECRET`) or a file named by it (`client_secret_file`), never from a shared
TOML file, and prints masked.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field, SecretStr, model_validator

from dasscod.secret_files import FileSecrets


class ArsSettings(FileSecrets):
    model_config = ConfigDict(extra="forbid")

    #: Asset service root, up to and excluding `/v1`, e.g. https://storage.test.dassco.dk/ars/api
    base_url: str
    #: File proxy root, up to and excluding `/shares` and `/assetfiles`, e.g.
    #: https://storage.test.dassco.dk/file_proxy/api. Defaults to `base_url`.
    file_proxy_url: str | None = None
    #: Keycloak token endpoint (`.../realms/<realm>/protocol/openid-connect/token`).
    token_url: str
    client_id: str
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    #: Per-request timeout (connect, read, write, pool) of ordinary calls.
    timeout_s: float = Field(default=30.0, gt=0)
    #: Per-request timeout of file uploads and downloads (files are tens to hundreds of MB).
    transfer_timeout_s: float = Field(default=600.0, gt=0)
    #: Attempts per call, the first included, on connection errors, timeouts, 5xx and 429.
    retry_attempts: int = Field(default=5, ge=1)
    #: Total time budget of one call's retries; then the last error goes to the caller.
    retry_timeout_s: float = Field(default=60.0, gt=0)
    retry_wait_initial_s: float = Field(default=0.5, ge=0)
    retry_wait_max_s: float = Field(default=10.0, ge=0)
    retry_wait_jitter_s: float = Field(default=1.0, ge=0)
    #: A 429 whose Retry-After asks for longer than this is not waited for in the call: the
    #: caller gets `ArsThrottled` and can park the asset instead of holding a task.
    retry_after_max_s: float = Field(default=30.0, ge=0)
    #: Fetch a new token this long before the current one expires (at most half its lifetime).
    token_leeway_s: float = Field(default=30.0, ge=0)
    max_connections: int = Field(default=10, ge=1)
    #: Who we are in ARS's event log (`updateUser`).
    update_user: str = "dasscod"
    #: Plain http:// URLs carry the client secret, tokens and images in cleartext: refused
    #: unless this is set (the simulator of the dev stack sets it).
    allow_http: bool = False

    @model_validator(mode="after")
    def _https(self) -> ArsSettings:
        if self.allow_http:
            return self
        for name in ("base_url", "file_proxy_url", "token_url"):
            url = getattr(self, name)
            if url is not None and not url.lower().startswith("https://"):
                raise ValueError(f"ars.{name} must be an https:// URL (got {url!r}); plain "
                                 "http sends the client secret and tokens in cleartext (set "
                                 "ars.allow_http = true only for a local test service)")
        return self

    @model_validator(mode="after")
    def _secret(self) -> ArsSettings:
        # client_secret_file was read by FileSecrets, before this validator.
        if self.client_secret is None:
            raise ValueError(
                "ars.client_secret is not set: set DASSCOD_ARS__CLIENT_SECRET "
                "or ars.client_secret_file"
            )
        return self

    @property
    def proxy_url(self) -> str:
        return (self.file_proxy_url or self.base_url).rstrip("/")

    def secret(self) -> str:
        assert self.client_secret is not None  # guaranteed by the validator
        return self.client_secret.get_secret_value()
