"""Secrets from files and from systemd credentials ($CREDENTIALS_DIRECTORY), and what
check-config shows of them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dasscod.settings import ConfigError, load_settings, masked

TOKEN_SECRET = "credential-token-secret-0123456789abcdef"
MONGO_URI = "mongodb://dasscod:mongo-Pw-9f8e7d@db.example.org/?authSource=admin"
ARS_SECRET = "ars-client-secret-5a4b3c"
INTAKE_TOKEN = "intake-token-0123456789abcdef"
AGENT_TOKEN = "agent-token-0123456789abcdef"
ALICE = "alice-admin-token-0123456789"
ALL_SECRETS = (TOKEN_SECRET, "mongo-Pw-9f8e7d", ARS_SECRET, INTAKE_TOKEN, AGENT_TOKEN, ALICE)

PULL_CLUSTER = """
[clusters.hpc]
scheduler = "pull"
work_root = "/work"
state_dir = "/jobs"
[ars]
base_url = "https://ars.example.org/api"
token_url = "https://idp.example.org/token"
client_id = "dasscod"
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DASSCOD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def credentials_folder(tmp_path: Path) -> Path:
    """What systemd's LoadCredential= lines of the example unit make."""
    folder = tmp_path / "credentials"
    folder.mkdir()
    write(folder / "security.token_secret", TOKEN_SECRET + "\n")
    write(folder / "mongo.uri", MONGO_URI + "\n")
    write(folder / "ars.client_secret", ARS_SECRET)
    write(folder / "intake.api_token", INTAKE_TOKEN)
    write(folder / "clusters.hpc.agent_token", AGENT_TOKEN)
    write(folder / "control.tokens", f'alice = "{ALICE}"\n')
    write(folder / "ssh_key", "not ours: left alone")
    return folder


def test_every_secret_comes_from_a_systemd_credential_and_is_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials_folder(tmp_path)))
    s = load_settings(write(tmp_path / "dasscod.toml", PULL_CLUSTER))
    assert s.security.secret() == TOKEN_SECRET
    assert s.mongo.uri.get_secret_value() == MONGO_URI
    assert s.ars is not None and s.ars.secret() == ARS_SECRET
    assert s.intake.api_token is not None
    assert s.intake.api_token.get_secret_value() == INTAKE_TOKEN
    agent = s.clusters["hpc"].agent_token
    assert agent is not None and agent.get_secret_value() == AGENT_TOKEN
    assert s.control.named() == {"alice": ALICE}
    shown = json.dumps(masked(s))
    assert not [secret for secret in ALL_SECRETS if secret in shown]


def test_every_secret_comes_from_a_file_named_in_the_configuration(tmp_path: Path) -> None:
    files = credentials_folder(tmp_path)
    text = PULL_CLUSTER.replace('scheduler = "pull"', f'scheduler = "pull"\n'
                                f'agent_token_file = "{files / "clusters.hpc.agent_token"}"')
    text = text.replace('client_id = "dasscod"', f'client_id = "dasscod"\n'
                        f'client_secret_file = "{files / "ars.client_secret"}"')
    text += (f'[security]\ntoken_secret_file = "{files / "security.token_secret"}"\n'
             f'[mongo]\nuri_file = "{files / "mongo.uri"}"\n'
             f'[intake]\napi_token_file = "{files / "intake.api_token"}"\n'
             f'[control]\ntokens_file = "{files / "control.tokens"}"\n')
    s = load_settings(write(tmp_path / "dasscod.toml", text))
    assert s.security.secret() == TOKEN_SECRET
    assert s.mongo.uri.get_secret_value() == MONGO_URI
    assert s.ars is not None and s.ars.secret() == ARS_SECRET
    assert s.intake.api_token is not None
    assert s.intake.api_token.get_secret_value() == INTAKE_TOKEN
    assert s.control.named() == {"alice": ALICE}
    assert not [secret for secret in ALL_SECRETS if secret in json.dumps(masked(s))]


def test_the_environment_wins_over_a_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials_folder(tmp_path)))
    monkeypatch.setenv("DASSCOD_SECURITY__TOKEN_SECRET", "e" * 40)
    s = load_settings(write(tmp_path / "dasscod.toml", PULL_CLUSTER))
    assert s.security.secret() == "e" * 40


def test_a_short_credential_is_refused_without_showing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "credentials"
    folder.mkdir()
    write(folder / "security.token_secret", "tiny-Secret")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(folder))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "at least 32 characters" in str(info.value)
    assert "tiny-Secret" not in str(info.value)


def test_an_empty_secret_file_names_the_file(tmp_path: Path) -> None:
    empty = write(tmp_path / "uri", "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path / "dasscod.toml", f'[mongo]\nuri_file = "{empty}"\n'))
    assert f"uri_file {empty} is empty" in str(info.value)


@pytest.mark.parametrize(("name", "value"), [
    ("AWS_SECRET_ACCESS_KEY", "aws-secret-value"),
    ("GITHUB_TOKEN", "ghp-token-value"),
    ("DB_PASSWORD", "db-password-value"),
    ("S3_API_KEY", "s3-key-value"),
    ("IRODS_AUTH_FILE_CONTENT", "irods-auth-value"),
])
def test_check_config_masks_cluster_env_values_whose_name_looks_secret(
    tmp_path: Path, name: str, value: str
) -> None:
    text = f'[clusters.local.env]\n{name} = "{value}"\nPYTHONPATH = "/opt/lib"\n'
    shown = masked(load_settings(write(tmp_path / "dasscod.toml", text)))
    env = shown["clusters"]["local"]["env"]
    assert env == {name: "**********", "PYTHONPATH": "/opt/lib"}


def test_check_config_masks_a_password_inside_an_env_url(tmp_path: Path) -> None:
    text = '[clusters.local.env]\nDATABASE_URL = "postgres://app:hunter2-pw@db/x"\n'
    shown = masked(load_settings(write(tmp_path / "dasscod.toml", text)))
    assert shown["clusters"]["local"]["env"]["DATABASE_URL"] == "postgres://**********@db/x"
