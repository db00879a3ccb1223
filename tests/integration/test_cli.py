"""The command line: check-config and status against a real store (the operators' commands
against a running daemon are in tests/e2e/test_control_e2e.py)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pymongo import MongoClient

from dasscod.cli import main
from dasscod.pipelines import load_pipelines
from dasscod.store.codec import to_bson
from tests.conftest import make_track

SECRET = "cli-test-secret-0123456789abcdefghij"


@pytest.fixture
def env(mongo_uri: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    database = f"cli_{uuid.uuid4().hex[:10]}"
    monkeypatch.delenv("DASSCOD_CONFIG", raising=False)
    return {
        "DASSCOD_MONGO__URI": mongo_uri,
        "DASSCOD_MONGO__DATABASE": database,
        "DASSCOD_SECURITY__TOKEN_SECRET": SECRET,
    }


def test_check_config_prints_the_effective_settings_with_secrets_masked(
    env: dict[str, str],
) -> None:
    result = CliRunner().invoke(main, ["check-config"], env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["security"]["token_secret"] == "**********"
    assert shown["mongo"]["uri"] == "**********"
    assert SECRET not in result.output
    assert shown["pipelines"]["PIPEHERB0001"][0] == "load"


def test_check_config_names_the_bad_field_and_exits_non_zero(
    tmp_path: Path, env: dict[str, str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[listener]\nport = 70000\n")
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)], env=env)
    assert result.exit_code != 0
    assert "listener.port" in result.output
    assert "DASSCOD_LISTENER__PORT" in result.output


def test_check_config_refuses_a_missing_file(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["check-config", "--config", "/nonexistent.toml"], env=env)
    assert result.exit_code != 0
    assert "does not exist" in result.output


def test_status_counts_assets_and_jobs(mongo_uri: str, env: dict[str, str]) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    try:
        coll = client[env["DASSCOD_MONGO__DATABASE"]]["track"]
        for guid in ("a-1", "a-2"):
            coll.insert_one(to_bson(make_track(guid).to_document()))
        result = CliRunner().invoke(main, ["status", "--json"], env=env)
        assert result.exit_code == 0, result.output
        counts = json.loads(result.output)
        assert counts["assets"] == {"WAITING": 2}
        jobs = [j.name for j in load_pipelines()["PIPEHERB0001"].jobs]
        assert counts["jobs"] == {j: {"WAITING": 2} for j in jobs}
        human = CliRunner().invoke(main, ["status"], env=env)
        assert "assets: 2" in human.output and "clean_up" in human.output
    finally:
        client.drop_database(env["DASSCOD_MONGO__DATABASE"])
        client.close()


def test_status_says_when_mongodb_is_unreachable(env: dict[str, str]) -> None:
    env = {**env, "DASSCOD_MONGO__URI": "mongodb://127.0.0.1:9/?directConnection=true",
           "DASSCOD_MONGO__TIMEOUT_S": "0.5"}
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code != 0
    assert "MongoDB is unreachable" in result.output
    assert "[Errno 111]" in result.output  # the reason, not only the verdict


def test_the_hpc_contract_file_matches_the_listener() -> None:
    """hpc/openapi.json is what pipeline developers code against: it must be the served one."""
    result = CliRunner().invoke(main, ["openapi"])
    assert result.exit_code == 0
    committed = (Path(__file__).parents[2] / "hpc" / "openapi.json").read_text()
    assert json.loads(committed) == json.loads(result.output), (
        "hpc/openapi.json is out of date: run `.venv/bin/dasscod openapi > hpc/openapi.json`"
    )


def test_a_control_command_without_a_daemon_or_a_token_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("DASSCOD_CONTROL_TOKEN", "DASSCOD_CONTROL_TOKEN_FILE", "DASSCOD_CONTROL_URL"):
        monkeypatch.delenv(name, raising=False)
    no_token = CliRunner().invoke(main, ["ls", "--url", "http://127.0.0.1:9"])
    assert no_token.exit_code == 1
    assert "no admin token: give --token-file FILE, or set DASSCOD_CONTROL_TOKEN" in (
        no_token.output)
    no_daemon = CliRunner().invoke(main, ["ls", "--url", "http://127.0.0.1:9"],
                                   env={"DASSCOD_CONTROL_TOKEN": "some-token-0123456789"})
    assert no_daemon.exit_code == 1
    assert "cannot reach the daemon at http://127.0.0.1:9" in no_daemon.output
    assert len(no_daemon.output.strip().splitlines()) == 1, "one line"


def test_run_with_an_unusable_mongo_uri_exits_non_zero_with_the_reason(
    env: dict[str, str],
) -> None:
    env = {**env, "DASSCOD_MONGO__URI": "mongodb+srv://u:p@127.0.0.1,other/"}
    result = CliRunner().invoke(main, ["run"], env=env)
    assert result.exit_code == 1
    assert "mongo.uri is not usable" in result.output
    assert "only one, hostname" in result.output  # the driver's reason
    assert ":p@" not in result.output  # the password is not repeated
