"""Secrets given as files: a `X_file` sibling of a secret field, or a systemd credential.

Every secret of the configuration (`mongo.uri`, `security.token_secret`,
`ars.client_secret`, `intake.api_token`, `clusters.<name>.agent_token`, `control.tokens`) can
come from three places besides the environment:

- a file named by the field's `_file` sibling (`security.token_secret_file = "/etc/..."`);
- a systemd credential of the field's dotted name (`LoadCredential=mongo.uri:/etc/dasscod/...`
  in the unit): systemd copies it into `$CREDENTIALS_DIRECTORY`, readable by the service only,
  and it is never in the process environment (which jobs could inherit) nor in a shared file.

A value given explicitly wins over its `_file`; the environment wins over a credential, and a
credential over the TOML file (the usual precedence: the closer to the process, the stronger).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"

#: Credential names read from $CREDENTIALS_DIRECTORY (`*` is a cluster's name). Other files
#: there (an SSH key, for instance) are left alone.
CREDENTIAL_NAMES = (
    "mongo.uri",
    "security.token_secret",
    "security.previous_secrets",
    "ars.client_secret",
    "intake.api_token",
    "clusters.*.agent_token",
    "control.tokens",
    "alerts.webhook_url",
    "alerts.smtp_password",
)
#: Credentials holding a TOML table of name = "secret" lines rather than one secret.
TABLE_CREDENTIALS = frozenset({"control.tokens", "security.previous_secrets"})

_CLUSTER_NAME = r"[A-Za-z0-9_-]+"


def read_secret_file(path: Path, what: str) -> str:
    """The file's text without surrounding whitespace (editors add a final newline)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{what} {path} is empty")
    return text


def read_secret_table(path: Path, what: str) -> dict[str, str]:
    """A TOML file of `name = "secret"` lines."""
    try:
        data = tomllib.loads(read_secret_file(path, what))
    except tomllib.TOMLDecodeError:
        # The parser's message quotes the line, and the line holds a secret.
        raise ValueError(f"{what} {path} is not TOML of name = \"secret\" lines") from None
    if not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{what} {path}: every value must be a string")
    return {str(k): str(v) for k, v in data.items()}


class FileSecrets(BaseModel):
    """Mixin for a settings section: each `X: SecretStr | None` with a sibling
    `X_file: Path | None` is filled from that file unless X was given explicitly."""

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Any:
        fields = type(self).model_fields
        for name in fields:
            target = name.removesuffix("_file")
            if target == name or target not in fields:
                continue
            path = getattr(self, name)
            explicit = target in self.model_fields_set and getattr(self, target) is not None
            if path is None or explicit:
                continue
            if _is_secret(fields[target]):
                setattr(self, target, SecretStr(read_secret_file(path, name)))
        return self


def _is_secret(field: FieldInfo) -> bool:
    return field.annotation in (SecretStr, SecretStr | None)


class CredentialsSource(PydanticBaseSettingsSource):
    """Settings from systemd credentials: one file per secret in $CREDENTIALS_DIRECTORY,
    named by the secret's dotted path (`security.token_secret`, `clusters.hpc.agent_token`)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        folder = os.environ.get(CREDENTIALS_ENV)
        self.values: dict[str, Any] = credentials(Path(folder)) if folder else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, True

    def __call__(self) -> dict[str, Any]:
        return self.values


def credentials(folder: Path) -> dict[str, Any]:
    """The known credentials present in `folder`, as a nested settings dict."""
    out: dict[str, Any] = {}
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError as exc:
        raise ValueError(f"cannot read ${CREDENTIALS_ENV} {folder}: {exc.strerror}") from None
    for name in names:
        pattern = next((p for p in CREDENTIAL_NAMES if _matches(p, name)), None)
        if pattern is None:
            continue
        what = f"credential {name} in ${CREDENTIALS_ENV}"
        value: Any = (read_secret_table(folder / name, what) if pattern in TABLE_CREDENTIALS
                      else read_secret_file(folder / name, what))
        node = out
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _matches(pattern: str, name: str) -> bool:
    regex = re.escape(pattern).replace(r"\*", _CLUSTER_NAME)
    return re.fullmatch(regex, name) is not None
