"""The configured clusters: each one a scheduler behind a transport, plus its settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dasscod.cluster.base import Scheduler, Transport
from dasscod.cluster.direct import DirectScheduler
from dasscod.cluster.local import LocalTransport
from dasscod.cluster.pull import NoTransport, PullScheduler
from dasscod.cluster.slurm import SlurmScheduler
from dasscod.cluster.ssh import SshTarget, SshTransport
from dasscod.cluster.torque import TorqueScheduler
from dasscod.settings import ClusterSettings


@dataclass
class Cluster:
    name: str
    settings: ClusterSettings
    transport: Transport
    scheduler: Scheduler

    @property
    def pull(self) -> bool:
        """The cluster's agent submits and watches its jobs; the daemon never reaches it."""
        return self.settings.scheduler == "pull"

    def workdir(self, asset_guid: str) -> PurePosixPath:
        return PurePosixPath(_absolute(self.settings.work_root)) / asset_guid


def _absolute(path: Path) -> str:
    # Relative paths in the settings are relative to the daemon's working directory; the
    # scheduler runs jobs elsewhere, so hand it absolute paths.
    return str(path if path.is_absolute() else Path.cwd() / path)


def build_clusters(settings: dict[str, ClusterSettings]) -> dict[str, Cluster]:
    clusters: dict[str, Cluster] = {}
    for name, cfg in settings.items():
        transport = _transport(name, cfg)
        clusters[name] = Cluster(name, cfg, transport, _scheduler(cfg, transport))
    return clusters


def _transport(name: str, cfg: ClusterSettings) -> Transport:
    if cfg.scheduler == "pull":
        return NoTransport(name)
    if cfg.transport == "ssh":
        assert cfg.ssh is not None  # the settings validate this
        return SshTransport(name, SshTarget(
            host=cfg.ssh.host, port=cfg.ssh.port, user=cfg.ssh.user, key_file=cfg.ssh.key_file,
            known_hosts=cfg.ssh.known_hosts, max_channels=cfg.ssh.max_channels,
        ))  # fmt: skip
    return LocalTransport(name)


def _scheduler(cfg: ClusterSettings, transport: Transport) -> Scheduler:
    state_dir = PurePosixPath(_absolute(cfg.state_dir))
    if cfg.scheduler == "pull":
        kind = cfg.pull_submit
        inner = _scheduler(cfg.model_copy(update={"scheduler": kind}), transport)
        assert isinstance(inner, TorqueScheduler | SlurmScheduler)
        return PullScheduler(inner)
    if cfg.scheduler == "slurm":
        return SlurmScheduler(
            transport, state_dir=state_dir, partition=cfg.partition, account=cfg.account,
            accounting=cfg.accounting, sbatch_options=cfg.sbatch_options,
            submit_timeout_s=cfg.submit_timeout_s,
        )  # fmt: skip
    if cfg.scheduler == "torque":
        return TorqueScheduler(
            transport, state_dir=state_dir, queue=cfg.queue or cfg.partition,
            account=cfg.account, pbs_options=cfg.pbs_options,
            submit_timeout_s=cfg.submit_timeout_s,
        )  # fmt: skip
    return DirectScheduler(transport, state_dir=state_dir)
