"""`dasscod` command line: run the daemon, check the configuration, count assets; and the
operators' commands (`dasscod.control_cli`), which talk to a running daemon."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import click
from pymongo.errors import ConfigurationError

from dasscod.control_cli import register as register_control_commands
from dasscod.log import configure_logging
from dasscod.pipeline import PipelineError
from dasscod.pipelines import load_pipelines
from dasscod.settings import ConfigError, Settings, load_settings, masked
from dasscod.store import Stores
from dasscod.store.errors import MongoConfigurationError

T = TypeVar("T")

config_option = click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML configuration file (default: $DASSCOD_CONFIG, else built-in defaults).",
)


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _with_stores(settings: Settings, work: Callable[[Stores], Awaitable[T]]) -> T:
    """Run `work` against the configured database and close the client afterwards."""

    async def main() -> T:
        try:
            pipelines = load_pipelines(settings.pipelines_dir)
        except PipelineError as exc:
            raise click.ClickException(str(exc)) from exc
        stores = Stores.from_settings(settings.mongo, pipelines)
        try:
            ping = await stores.ping()
            if ping.fatal:
                raise click.ClickException(
                    f"MongoDB refused us: {ping.error}; check the user, password and "
                    "database in mongo.uri (DASSCOD_MONGO__URI)"
                )
            if not ping:
                raise click.ClickException(
                    f"MongoDB is unreachable within {settings.mongo.timeout_s:g} s "
                    f"({ping.error}): check mongo.uri (DASSCOD_MONGO__URI) and that the "
                    "server runs"
                )
            return await work(stores)
        finally:
            await stores.close()

    return anyio.run(main)


@click.group()
def main() -> None:
    """dasscod: the DaSSCo integration daemon."""


@main.command()
@config_option
def run(config: Path | None) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    settings = _settings(config)
    configure_logging(settings.log_level, settings.log_format)
    from dasscod.wiring import run_daemon  # the daemon's imports are not needed by other commands

    try:
        failure = anyio.run(run_daemon, settings, config)
    except (ConfigError, PipelineError, ValueError, MongoConfigurationError) as exc:
        raise click.ClickException(str(exc)) from exc
    except ConfigurationError as exc:  # PyMongo's: a malformed mongo.uri, an unknown option
        raise click.ClickException(
            f"mongo.uri is not usable: {exc}; fix mongo.uri (DASSCOD_MONGO__URI)"
        ) from exc
    if failure is not None:  # an unexpected stop: non-zero, so systemd's Restart= acts
        raise click.ClickException(failure)


@main.command("check-config")
@config_option
def check_config(config: Path | None) -> None:
    """Validate the configuration and print the effective settings, secrets masked."""
    settings = _settings(config)
    try:
        pipelines = load_pipelines(settings.pipelines_dir)
    except PipelineError as exc:
        raise click.ClickException(str(exc)) from exc
    problems = [
        f"pipeline {p.name} job {j.name}: none of its clusters ({', '.join(j.clusters)}) "
        "is configured"
        for p in pipelines.values()
        for j in p.jobs
        if not any(c in settings.clusters for c in j.clusters)
    ]
    if settings.security.token_secret is None:
        problems.append(
            "security.token_secret is not set (DASSCOD_SECURITY__TOKEN_SECRET or "
            "security.token_secret_file): jobs cannot be given callback tokens"
        )
    effective: dict[str, Any] = masked(settings)
    effective["pipelines"] = {p.name: [j.name for j in p.jobs] for p in pipelines.values()}
    click.echo(json.dumps(effective, indent=2, default=str))
    if problems:
        raise click.ClickException("\n".join(problems))


@main.command()
def openapi() -> None:
    """Print the listener's OpenAPI document: the contract for the HPC side (hpc/openapi.json)."""
    click.echo(json.dumps(listener_contract(), indent=2, sort_keys=True))


def listener_contract() -> dict[str, Any]:
    from dasscod.listener.app import create_app

    # Only the routes and schemas are wanted; the app is never served, so no store is needed.
    app = create_app(cast(Stores, None), token_secret="x" * 32)
    document: dict[str, Any] = app.openapi()
    return document


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config: Path | None, as_json: bool) -> None:
    """Counts of assets by overall status and of jobs by name and status."""
    settings = _settings(config)
    counts = _with_stores(settings, lambda s: s.track.status_counts())
    if as_json:
        click.echo(json.dumps(counts, sort_keys=True))
        return
    assets: dict[str, int] = counts["assets"]
    click.echo(f"assets: {sum(assets.values())}")
    for state, n in sorted(assets.items()):
        click.echo(f"  {state:<15}{n:>8}")
    jobs: dict[str, dict[str, int]] = counts["jobs"]
    if jobs:
        states = sorted({s for row in jobs.values() for s in row})
        width = max(len(j) for j in jobs) + 2
        click.echo("jobs:")
        click.echo("  " + "".ljust(width) + "".join(f"{s:>10}" for s in states))
        for job, row in sorted(jobs.items()):
            click.echo("  " + job.ljust(width) + "".join(f"{row.get(s, 0):>10}" for s in states))


# The operators' commands (ls, show, errors, clusters, pause, resume, drain, cancel, retry,
# ars-retry, limits, audit) call a running daemon's control API.
register_control_commands(main)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
