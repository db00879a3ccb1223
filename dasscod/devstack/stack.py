"""The embedded local stack: a configuration for one machine, synthetic deliveries, and the
daemon as a child process. Used by `make demo`, `make bench` and the end-to-end tests.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dasscod.devstack.mongo import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The stand-in HPC module of the daemon's tests and benchmark (dasscod/devstack/hpc_stand_in.py):
#: the orchestration without the image processing.
STAND_IN_MODULES = "dasscod.devstack.hpc_stand_in"


@dataclass
class LocalStack:
    """Paths and settings of one local daemon: everything under `root`."""

    root: Path
    mongo_uri: str
    database: str = "dasscod"
    port: int = field(default_factory=free_port)
    token_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    #: Extra environment for every job (the test module's knobs, for instance).
    job_env: dict[str, str] = field(default_factory=dict)
    #: Python modules searched for job modules before the real ones in `hpc/`.
    hpc_modules: str = STAND_IN_MODULES
    max_jobs: int = 6
    assets_in_flight: int = 30
    watch_s: float = 1.0
    #: The `[ars]` section (see `dasscod.ars.settings.ArsSettings`), or None: no ARS sync.
    #: Give the secret as `client_secret_file`, not in this table.
    ars: dict[str, Any] | None = None
    #: Named admin tokens of the control API (`control.tokens`); none: the API is off.
    control_tokens: dict[str, str] = field(default_factory=dict)
    #: The leader lease (`leader.lease_s`); None: the default.
    lease_s: float | None = None
    #: Where jobs call back (`listener.public_url`): a proxy in front of two daemons.
    public_url: str | None = None

    @property
    def intake(self) -> Path:
        return self.root / "intake"

    @property
    def config_file(self) -> Path:
        return self.root / "dasscod.toml"

    def job_environment(self) -> dict[str, str]:
        """Jobs run this Python (found first on PATH as `python3`), and find the stand-in module in
        the repository."""
        bin_dir = str(Path(sys.executable).parent)
        return {
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PYTHONPATH": str(REPO_ROOT),
            "DASSCO_HPC_MODULES": self.hpc_modules,
            "DASSCO_CALLBACK_DEADLINE_S": "600",
            # On one machine the daemon is back within seconds of a restart: retry often.
            "DASSCO_CALLBACK_BACKOFF_MAX_S": "2",
            **self.job_env,
        }

    def settings_data(self) -> dict[str, Any]:
        listener: dict[str, Any] = {"host": "127.0.0.1", "port": self.port}
        if self.public_url is not None:
            listener["public_url"] = self.public_url
        data = {
            "mongo": {"uri": self.mongo_uri, "database": self.database},
            "listener": listener,
            "clusters": {
                "local": {
                    "max_jobs": self.max_jobs,
                    "work_root": str(self.root / "cluster" / "work"),
                    "state_dir": str(self.root / "cluster" / "jobs"),
                    "env": self.job_environment(),
                }
            },
            "intake": {
                "folder": str(self.intake),
                "work_area": str(self.root / "assets"),
                "quarantine": str(self.root / "quarantine"),
                "settle_s": 1.0,
                "poll_s": 0.2,
            },
            "throttle": {"assets_in_flight": self.assets_in_flight},
            "timing": {
                "watch_s": self.watch_s,
                "housekeeping_s": 2.0,
                "sweep_s": 5.0,
                "retry_backoff_s": 1.0,
                "retry_backoff_max_s": 5.0,
            },
            "security": {"token_secret": self.token_secret},
        }
        if self.ars is not None:
            data["ars"] = dict(self.ars)
        if self.control_tokens:
            data["control"] = {"tokens": dict(self.control_tokens)}
        if self.lease_s is not None:
            data["leader"] = {"lease_s": self.lease_s}
        return data

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        self.intake.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(to_toml(self.settings_data()), encoding="utf-8")
        self.config_file.chmod(0o600)  # it holds the token secret
        return self.config_file

    def start_daemon(
        self, log_file: Path | None = None, argv: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        """`dasscod run` as a child process: it can be SIGKILLed and restarted like the real
        service. `argv` replaces `python -m dasscod run` (the config file is appended)."""
        log = (log_file or self.root / "daemon.log").open("ab")
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        env.pop("DASSCOD_CONFIG", None)
        try:
            return subprocess.Popen(
                [*(argv or [sys.executable, "-m", "dasscod", "run"]),
                 "--config", str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.root,
            )
        finally:
            log.close()


def stop_daemon(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int:
    """SIGTERM, then wait; returns the exit status (SIGKILL after the timeout)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def deliver(
    intake: Path,
    guid: str,
    *,
    pipeline: str = "PIPEHERB0001",
    images: Mapping[str, bytes] | None = None,
    files: Mapping[str, Path] | None = None,
    taken: datetime | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write one asset delivery (metadata JSON + image files) the way the digitisation side
    does, then the `.ready` marker last so intake never sees it half-written. `images` are
    written from bytes, `files` copied from paths."""
    folder = intake / guid
    folder.mkdir(parents=True)
    if images is None and files is None:
        images = {f"{guid}.tif": synthetic_image(guid)}
    images = images or {}
    metadata = {
        "asset_guid": guid,
        "institution": "NHMD",
        "collection": "Vascular plants",
        "pipeline_name": pipeline,
        "workstation_name": "WORKHERB0001",
        "digitiser": "Demo Digitiser",
        "date_asset_taken": (taken or datetime.now(UTC)).isoformat(),
        "file_format": "tif",
        **(extra or {}),
    }
    for name, data in images.items():
        (folder / name).write_bytes(data)
    for name, source in (files or {}).items():
        shutil.copyfile(source, folder / name)
    (folder / f"{guid}.json").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    (folder / ".ready").touch()
    return folder


def synthetic_image(seed: str, size: int = 4096) -> bytes:
    """Deterministic bytes standing in for an image (the real generator comes with the HPC
    modules); a TIFF header so that type sniffing sees a TIFF."""
    block = zlib.crc32(seed.encode()).to_bytes(4, "little")
    return b"II*\x00" + (block * (size // 4 + 1))[: size - 4]


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """A small TOML writer for our own settings (tables of strings, numbers, bools)."""
    scalars: list[str] = []
    tables: list[str] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            name = f"{prefix}.{_key(key)}" if prefix else _key(key)
            body = to_toml(value, name)
            tables.append(f"[{name}]\n{body}" if _has_scalars(value) else body)
        else:
            scalars.append(f"{_key(key)} = {_value(value)}")
    out = "\n".join(scalars)
    if scalars:
        out += "\n"
    return out + "".join("\n" + t for t in tables)


def _has_scalars(data: Mapping[str, Any]) -> bool:
    return any(not isinstance(v, Mapping) for v in data.values())


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
