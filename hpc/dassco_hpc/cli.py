"""Command line: `dassco-hpc run MODULE`, `dassco-hpc replay [WORKDIR]` and
`dassco-hpc agent --cluster NAME` (pull mode)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from dassco_hpc import exitcodes
from dassco_hpc._version import __version__
from dassco_hpc.client import CallbackClient, ca_bundle_from
from dassco_hpc.config import ClientSettings, Identity, callback_url, seconds
from dassco_hpc.errors import ConfigError
from dassco_hpc.log import stderr_log
from dassco_hpc.runner import Runner
from dassco_hpc.undelivered import replay


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dassco-hpc",
        description="Run one DaSSCo pipeline module for one asset and report to dasscod.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="run a module as the job attempt described by the DASSCO_* environment"
    )
    run.add_argument("module", help="module name, e.g. barcode")
    again = commands.add_parser(
        "replay", help="send the callbacks saved in a work folder's .undelivered.jsonl"
    )
    again.add_argument(
        "workdir",
        nargs="?",
        type=Path,
        help="the work folder (default: $DASSCO_WORKDIR, else the current directory)",
    )
    again.add_argument(
        "--token-file", type=Path, help="file holding the bearer token (default: $DASSCO_TOKEN)"
    )
    again.add_argument(
        "--url",
        help="listener base URL (default: $DASSCO_CALLBACK_URL, "
        "else the URL saved with each callback)",
    )
    again.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help="give up on an unreachable listener after this long "
        "(default: $DASSCO_CALLBACK_DEADLINE_S, else 3600)",
    )
    agent = commands.add_parser(
        "agent", help="pull mode: take this cluster's jobs from dasscod, submit them, report"
    )
    agent.add_argument("--cluster", required=True, help="the cluster's name in dasscod's config")
    agent.add_argument(
        "--url", required=True, help="the listener's API base, e.g. https://dasscod.example/api/v1"
    )
    agent.add_argument(
        "--token-file",
        required=True,
        type=Path,
        help="file holding the cluster's agent credential (agent_token)",
    )
    agent.add_argument(
        "--state-dir",
        required=True,
        type=Path,
        help="folder for job scripts (0600), their output and the lock file",
    )
    agent.add_argument(
        "--submit",
        choices=("torque", "slurm"),
        default="torque",
        help="qsub/qstat/qdel (default) or sbatch/squeue/scancel",
    )
    agent.add_argument("--batch", type=int, default=20, help="jobs claimed per run")
    agent.add_argument(
        "--deadline",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up on an unreachable daemon after this long (default 60)",
    )
    how = agent.add_mutually_exclusive_group()
    how.add_argument("--once", action="store_true", help="one run, e.g. from cron (default)")
    how.add_argument("--loop", type=float, metavar="SECONDS", help="run every SECONDS")
    return parser


def _read_token_file(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file: {exc}") from None
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    return token


def _agent(args: argparse.Namespace) -> int:
    from dassco_hpc.agent import Agent, Slurm, Torque, run_agent

    try:
        token = _read_token_file(args.token_file)
        url = callback_url(args.url, "--url")
        if args.batch < 1 or args.deadline <= 0 or (args.loop is not None and args.loop <= 0):
            raise ConfigError("--batch, --deadline and --loop must be positive")
        ca_bundle = ca_bundle_from(os.environ)
    except ConfigError as exc:
        stderr_log(f"cannot run the agent: {exc}")
        return exitcodes.CONFIG
    settings = ClientSettings.from_env({})
    client = CallbackClient(
        base_url=url,
        token=token,
        deadline_s=args.deadline,
        timeout_s=settings.timeout_s,
        backoff_s=settings.backoff_s,
        backoff_max_s=min(settings.backoff_max_s, 10.0),
        ca_bundle=ca_bundle,
    )
    scheduler = Slurm() if args.submit == "slurm" else Torque()
    agent = Agent(args.cluster, client, scheduler, args.state_dir, batch=args.batch)
    return run_agent(agent, loop_s=args.loop, lock=args.state_dir / ".agent.lock")


def _run(module: str, env: Mapping[str, str]) -> int:
    try:
        identity = Identity.from_env(env)
        client = CallbackClient.from_env(env, token=identity.token, base_url=identity.callback_url)
    except ConfigError as exc:
        stderr_log(f"cannot run {module}: {exc}")
        return exitcodes.CONFIG
    return Runner(identity, client, env).run(module)


def _replay(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        if args.token_file is not None:
            token = _read_token_file(args.token_file)
        else:
            token = env.get("DASSCO_TOKEN", "").strip()
            if not token:
                raise ConfigError("no token: set DASSCO_TOKEN or give --token-file")
        url = args.url or env.get("DASSCO_CALLBACK_URL", "").strip() or None
        if url is not None:
            url = callback_url(url, "the callback URL")
        settings = ClientSettings.from_env(env)
        ca_bundle = ca_bundle_from(env)
        deadline = settings.deadline_s
        if args.deadline is not None:
            deadline = seconds({"--deadline": str(args.deadline)}, "--deadline", deadline)
    except ConfigError as exc:
        stderr_log(f"cannot replay: {exc}")
        return exitcodes.CONFIG
    workdir = args.workdir or Path(env.get("DASSCO_WORKDIR", "").strip() or ".")
    client = CallbackClient(
        base_url=url or "",
        token=token,
        deadline_s=deadline,
        timeout_s=settings.timeout_s,
        backoff_s=settings.backoff_s,
        backoff_max_s=settings.backoff_max_s,
        ca_bundle=ca_bundle,
    )
    return replay(workdir, client, base_url=url).exit_code


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    environ = os.environ if env is None else env
    if args.command == "run":
        return _run(args.module, environ)
    if args.command == "agent":
        return _agent(args)
    return _replay(args, environ)


if __name__ == "__main__":
    sys.exit(main())
