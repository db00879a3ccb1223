"""Settings: defaults, the TOML file, `DASSCOD_*` overrides, and the errors an operator sees."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dasscod.pipelines import BUILTIN_PIPELINES
from dasscod.settings import ConfigError, Settings, load_settings, masked

MONGO_PASSWORD = "pw-Zq8vX3tK"
SECRET = "s3cr3t-token-value-0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever DASSCOD_* variables the test runner has must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith("DASSCOD_"):
            monkeypatch.delenv(name)


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dasscod.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value)


# --------------------------------------------------------------------------- loading


def test_defaults_load_without_a_file() -> None:
    s = load_settings()
    assert isinstance(s, Settings)
    assert (s.listener.host, s.listener.port) == ("127.0.0.1", 8080)
    assert s.listener.callback_base == "http://127.0.0.1:8080/api/v1"
    assert s.mongo.uri.get_secret_value() == "mongodb://127.0.0.1:27017"
    assert s.mongo.database == "dasscod"
    assert list(s.clusters) == ["local"]
    assert s.clusters["local"].max_jobs == 6
    assert s.pipelines_dir == BUILTIN_PIPELINES
    assert s.security.token_secret is None
    assert s.throttle.assets_in_flight == 30
    assert s.log_level == "INFO"


def test_the_token_secret_is_required_only_when_asked_for() -> None:
    s = load_settings()
    with pytest.raises(ConfigError, match="DASSCOD_SECURITY__TOKEN_SECRET"):
        s.security.secret()


def test_values_come_from_the_toml_file(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        f"""
        log_level = "DEBUG"
        [listener]
        host = "0.0.0.0"
        port = 9000
        public_url = "https://daemon.example.org/"
        [mongo]
        uri = "mongodb://dasscod:{MONGO_PASSWORD}@db.example.org"
        database = "prod"
        [clusters.local]
        max_jobs = 2
        env = {{ PATH = "/opt/bin" }}
        [timing]
        retry_backoff_s = 5
        """,
    )
    s = load_settings(path)
    assert (s.listener.host, s.listener.port) == ("0.0.0.0", 9000)
    assert s.listener.callback_base == "https://daemon.example.org/api/v1"
    assert s.mongo.database == "prod"
    assert MONGO_PASSWORD in s.mongo.uri.get_secret_value()
    assert s.clusters["local"].max_jobs == 2
    assert s.clusters["local"].env == {"PATH": "/opt/bin"}
    assert s.timing.retry_backoff_s == 5
    assert s.timing.sweep_s == 30  # untouched defaults stay
    assert s.log_level == "DEBUG"


def test_the_environment_beats_the_file_field_by_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config(tmp_path, '[listener]\nhost = "0.0.0.0"\nport = 9000\n[mongo]\ndatabase = "a"\n')
    monkeypatch.setenv("DASSCOD_LISTENER__PORT", "9100")
    monkeypatch.setenv("DASSCOD_MONGO__DATABASE", "from_env")
    monkeypatch.setenv("DASSCOD_SECURITY__TOKEN_SECRET", SECRET)
    monkeypatch.setenv("DASSCOD_LOG_LEVEL", "WARNING")
    s = load_settings(path)
    assert s.listener.port == 9100
    assert s.listener.host == "0.0.0.0"  # the file's other value in that section survives
    assert s.mongo.database == "from_env"
    assert s.security.secret() == SECRET
    assert s.log_level == "WARNING"


def test_the_config_file_can_be_named_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config(tmp_path, "[listener]\nport = 9300\n")
    monkeypatch.setenv("DASSCOD_CONFIG", str(path))
    assert load_settings().listener.port == 9300


def test_explicit_overrides_beat_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config(tmp_path, 'log_level = "DEBUG"\n')
    monkeypatch.setenv("DASSCOD_LOG_LEVEL", "WARNING")
    assert load_settings(path, log_level="ERROR").log_level == "ERROR"


# --------------------------------------------------------------------------- errors


def test_an_invalid_value_in_the_file_names_the_field_and_its_override(tmp_path: Path) -> None:
    path = config(tmp_path, "[listener]\nport = 70000\n")
    message = error_of(path)
    assert str(path) in message
    assert "listener.port" in message
    assert "65535" in message
    assert "DASSCOD_LISTENER__PORT" in message


def test_an_invalid_value_in_the_environment_is_reported_as_such(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DASSCOD_LISTENER__PORT", "not-a-port")
    message = error_of()
    assert "in the environment" in message
    assert "listener.port" in message
    assert "DASSCOD_LISTENER__PORT" in message


def test_a_nested_cluster_field_names_its_full_path(tmp_path: Path) -> None:
    message = error_of(config(tmp_path, "[clusters.local]\nmax_jobs = 0\n"))
    assert "clusters.local.max_jobs" in message
    assert "DASSCOD_CLUSTERS__LOCAL__MAX_JOBS" in message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("colour = 1\n", "colour"),
        ("[listener]\nportt = 1\n", "listener.portt"),
        ('log_level = "LOUD"\n', "log_level"),
        ("[cluster.local]\nmax_jobs = 1\n", "cluster"),
    ],
)
def test_unknown_or_invalid_keys_are_named(tmp_path: Path, text: str, field: str) -> None:
    message = error_of(config(tmp_path, text))
    assert f"  {field}: " in message


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    assert "does not exist" in error_of(tmp_path / "missing.toml")


def test_a_missing_file_named_in_the_environment_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASSCOD_CONFIG", str(tmp_path / "missing.toml"))
    assert str(tmp_path / "missing.toml") in error_of()


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = config(tmp_path, "[listener\nport = 1\n")
    assert error_of(path).startswith(f"{path}: ")


# --------------------------------------------------------------------------- secrets


def test_secrets_are_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = config(tmp_path, f'[mongo]\nuri = "mongodb://u:{MONGO_PASSWORD}@db"\n')
    monkeypatch.setenv("DASSCOD_SECURITY__TOKEN_SECRET", SECRET)
    s = load_settings(path)
    shown = masked(s)
    assert shown["mongo"]["uri"] == "**********"
    assert shown["security"]["token_secret"] == "**********"
    assert shown["listener"]["port"] == 8080
    text = json.dumps(shown)
    assert MONGO_PASSWORD not in text
    assert SECRET not in text
    assert MONGO_PASSWORD not in repr(s) and SECRET not in repr(s)


def test_secrets_stay_out_of_error_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config(
        tmp_path,
        f'[listener]\nport = 70000\n[mongo]\nuri = "mongodb://u:{MONGO_PASSWORD}@db"\n'
        f"timeout_s = 0\n",
    )
    monkeypatch.setenv("DASSCOD_SECURITY__TOKEN_SECRET", SECRET)
    message = error_of(path)
    assert "listener.port" in message and "mongo.timeout_s" in message
    assert MONGO_PASSWORD not in message
    assert SECRET not in message


def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    message = error_of(config(tmp_path, "[security]\ntoken_secret = 98765432109876543210\n"))
    assert "security.token_secret" in message
    assert "98765432109876543210" not in message


def test_a_misspelt_secret_field_does_not_leak_its_value(tmp_path: Path) -> None:
    message = error_of(config(tmp_path, f'[mongo]\nurl = "mongodb://u:{MONGO_PASSWORD}@db"\n'))
    assert "mongo.url" in message
    assert MONGO_PASSWORD not in message


def test_a_short_token_secret_is_refused_without_showing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASSCOD_SECURITY__TOKEN_SECRET", "tiny-Secret")
    message = error_of()
    assert "token_secret must be at least 32 characters" in message
    assert "tiny-Secret" not in message


def test_a_short_token_secret_names_its_field_and_override(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DASSCOD_SECURITY__TOKEN_SECRET", "tiny-Secret")
    message = error_of()
    assert "security.token_secret:" in message
    assert "DASSCOD_SECURITY__TOKEN_SECRET" in message


def test_the_token_secret_is_read_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "token.secret"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    s = load_settings(config(tmp_path, f'[security]\ntoken_secret_file = "{secret_file}"\n'))
    assert s.security.secret() == SECRET
    assert masked(s)["security"]["token_secret"] == "**********"
    assert SECRET not in json.dumps(masked(s))


def test_a_short_token_secret_file_is_refused(tmp_path: Path) -> None:
    secret_file = tmp_path / "token.secret"
    secret_file.write_text("short\n", encoding="utf-8")
    path = config(tmp_path, f'[security]\ntoken_secret_file = "{secret_file}"\n')
    message = error_of(path)
    assert "at least 32 characters" in message
    assert "short\n" not in message


def test_an_unreadable_token_secret_file_is_a_config_error(tmp_path: Path) -> None:
    path = config(tmp_path, f'[security]\ntoken_secret_file = "{tmp_path / "nope"}"\n')
    assert "cannot read token_secret_file" in error_of(path)


def test_an_explicit_token_secret_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "token.secret"
    secret_file.write_text("f" * 40, encoding="utf-8")
    monkeypatch.setenv("DASSCOD_SECURITY__TOKEN_SECRET", SECRET)
    path = config(tmp_path, f'[security]\ntoken_secret_file = "{secret_file}"\n')
    assert load_settings(path).security.secret() == SECRET


def test_the_ars_sync_section_is_read_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASSCOD_ARS_SYNC__CONCURRENCY", "4")
    assert load_settings().ars_sync.concurrency == 4


# --------------------------------------------------------------------------- control tokens

ALICE = "alice-admin-token-0123456789"


def test_control_tokens_come_from_the_environment_and_a_file_and_stay_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = tmp_path / "control-tokens.toml"
    tokens.write_text('bob = "bob-admin-token-0123456789"\n')
    monkeypatch.setenv("DASSCOD_CONTROL__TOKENS", json.dumps({"alice": ALICE}))
    settings = load_settings(config(tmp_path, f'[control]\ntokens_file = "{tokens}"\n'))
    assert settings.control.named() == {"alice": ALICE, "bob": "bob-admin-token-0123456789"}
    shown = json.dumps(masked(settings))
    assert ALICE not in shown and "bob-admin-token" not in shown


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[control]\ntokens = {alice = "short"}\n', "at least 16 characters"),
        ('[control]\ntokens = {"bad name" = "alice-admin-token-0123456789"}\n',
         "control token name 'bad name'"),
        (f'[control]\ntokens = {{alice = "{ALICE}", bob = "{ALICE}"}}\n',
         "control tokens of alice and bob are the same"),
        (f'[intake]\napi_token = "{ALICE}"\n[control]\ntokens = {{alice = "{ALICE}"}}\n',
         "control token of alice is also intake.api_token"),
    ],
)
def test_bad_control_tokens_are_refused_without_showing_them(
    tmp_path: Path, text: str, problem: str
) -> None:
    message = error_of(config(tmp_path, text))
    assert problem in message
    assert ALICE not in message


def test_a_control_tokens_file_that_is_not_toml_is_refused_without_quoting_it(
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "control-tokens.toml"
    tokens.write_text(f"alice: {ALICE}\n")
    message = error_of(config(tmp_path, f'[control]\ntokens_file = "{tokens}"\n'))
    assert "is not TOML" in message and ALICE not in message
