"""What a job attempt learns from its environment (set by the daemon when it submits it)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dassco_hpc.errors import ConfigError

#: Scheduler job ids, most specific first: an explicit override, then Slurm, then PBS/Torque.
HPC_JOB_ID_VARIABLES = ("DASSCO_HPC_JOB_ID", "SLURM_JOB_ID", "PBS_JOBID")


def required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"environment variable {name} is not set")
    return value


def callback_url(value: str, source: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{source} must be an http(s) URL, not {value!r}")
    return value.rstrip("/")


def seconds(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {name} must be a number of seconds, not {raw!r}"
        ) from None
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"environment variable {name} must be at least {minimum}, not {raw!r}")
    return value


@dataclass(frozen=True)
class ClientSettings:
    """Retry timing of the callback client (DASSCO_CALLBACK_*_S variables)."""

    deadline_s: float = 3600.0
    timeout_s: float = 30.0
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ClientSettings:
        d = cls()
        return cls(
            deadline_s=seconds(env, "DASSCO_CALLBACK_DEADLINE_S", d.deadline_s),
            timeout_s=seconds(env, "DASSCO_CALLBACK_TIMEOUT_S", d.timeout_s, minimum=0.001),
            backoff_s=seconds(env, "DASSCO_CALLBACK_BACKOFF_S", d.backoff_s),
            backoff_max_s=seconds(env, "DASSCO_CALLBACK_BACKOFF_MAX_S", d.backoff_max_s),
        )


@dataclass(frozen=True)
class Identity:
    """Which asset, job and attempt this process runs, and where."""

    callback_url: str
    token: str = field(repr=False)
    asset_guid: str
    job: str
    attempt: int
    workdir: Path
    asset_files: Path | None = None
    hpc_job_id: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Identity:
        """Raises ConfigError naming the first missing or bad variable."""
        url = callback_url(required(env, "DASSCO_CALLBACK_URL"), "DASSCO_CALLBACK_URL")
        token = required(env, "DASSCO_TOKEN")
        guid = required(env, "DASSCO_ASSET_GUID")
        job = required(env, "DASSCO_JOB")
        raw_attempt = required(env, "DASSCO_ATTEMPT")
        try:
            attempt = int(raw_attempt)
        except ValueError:
            attempt = 0
        if attempt < 1:
            raise ConfigError(
                f"environment variable DASSCO_ATTEMPT must be a positive integer, "
                f"not {raw_attempt!r}"
            )
        workdir = Path(required(env, "DASSCO_WORKDIR")).expanduser().absolute()
        files = env.get("DASSCO_ASSET_FILES", "").strip()
        job_id = next(
            (env[v].strip() for v in HPC_JOB_ID_VARIABLES if env.get(v, "").strip()), None
        )
        return cls(
            callback_url=url,
            token=token,
            asset_guid=guid,
            job=job,
            attempt=attempt,
            workdir=workdir,
            asset_files=Path(files).expanduser().absolute() if files else None,
            hpc_job_id=job_id,
        )
