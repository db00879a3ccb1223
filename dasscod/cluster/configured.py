"""The configured clusters: each one a scheduler behind a transport, plus its settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dasscod.cluster import batch
from dasscod.cluster.base import Scheduler, SchedulerError, Transport
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

    def state_dir(self) -> PurePosixPath:
        return PurePosixPath(_absolute(self.settings.state_dir))

    async def forget(self, asset_guid: str, job_names: list[str]) -> bool:
        """Remove an asset's work folder and the state files of the given jobs (scripts,
        output, exit files; the direct scheduler's job folders) on this cluster, in one
        command. False on a pull cluster, which the daemon cannot reach (its agent's
        `--state-dir` and work folders are the site's to clean). Raises TransportError,
        SchedulerError."""
        if self.pull:
            return False
        result = await self.transport.run(
            ["sh", "-c", FORGET, "dasscod-forget", str(self.state_dir()),
             str(self.workdir(asset_guid)), *job_names],
            timeout=120.0,
        )
        if result.exit_status != 0:
            raise SchedulerError(f"removing the files of asset {asset_guid} on {self.name} "
                                 f"failed: {batch.message(result)}", retryable=True)
        return True


#: `sh -c FORGET dasscod-forget STATE_DIR WORKDIR NAME...`: the values are positional arguments
#: (names made by scheduler_job_name, guids by the asset_guid pattern), never part of the text.
FORGET = """\
d=$1; w=$2; shift 2
rm -rf -- "$w" || exit 1
for n; do
    rm -rf -- "$d/$n" "$d/$n.sh" "$d/$n.sh.tmp" "$d/$n.out" "$d/$n.err" "$d/$n.exit" || exit 1
done
"""


def _absolute(path: Path) -> str:
    # Relative paths in the settings are relative to the daemon's working directory; the
    # scheduler runs jobs elsewhere, so hand it absolute paths.
    return str(path if path.is_absolute() else Path.cwd() / path)


def build_clusters(
    settings: dict[str, ClusterSettings], *, guard: Callable[[], None] | None = None
) -> dict[str, Cluster]:
    """`guard`, when given, is called before every command a transport runs and raises when
    this daemon may not act (it is not the leader)."""
    clusters: dict[str, Cluster] = {}
    for name, cfg in settings.items():
        transport = _transport(name, cfg, guard)
        clusters[name] = Cluster(name, cfg, transport, _scheduler(cfg, transport))
    return clusters


def _transport(
    name: str, cfg: ClusterSettings, guard: Callable[[], None] | None
) -> Transport:
    if cfg.scheduler == "pull":
        return NoTransport(name)
    if cfg.transport == "ssh":
        assert cfg.ssh is not None  # the settings validate this
        return SshTransport(name, SshTarget(
            host=cfg.ssh.host, port=cfg.ssh.port, user=cfg.ssh.user, key_file=cfg.ssh.key_file,
            known_hosts=cfg.ssh.known_hosts, max_channels=cfg.ssh.max_channels,
        ), guard=guard)  # fmt: skip
    return LocalTransport(name, guard=guard)


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
