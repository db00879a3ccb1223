"""The configured clusters: each one a scheduler behind a transport, plus its settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dasscod.cluster.base import Scheduler, Transport
from dasscod.cluster.direct import DirectScheduler
from dasscod.cluster.local import LocalTransport
from dasscod.settings import ClusterSettings


@dataclass
class Cluster:
    name: str
    settings: ClusterSettings
    transport: Transport
    scheduler: Scheduler

    def workdir(self, asset_guid: str) -> PurePosixPath:
        return PurePosixPath(_absolute(self.settings.work_root)) / asset_guid


def _absolute(path: Path) -> str:
    # Relative paths in the settings are relative to the daemon's working directory; the
    # scheduler runs jobs elsewhere, so hand it absolute paths.
    return str(path if path.is_absolute() else Path.cwd() / path)


def build_clusters(settings: dict[str, ClusterSettings]) -> dict[str, Cluster]:
    clusters: dict[str, Cluster] = {}
    for name, cfg in settings.items():
        transport = LocalTransport(name)
        scheduler = DirectScheduler(transport, state_dir=PurePosixPath(_absolute(cfg.state_dir)))
        clusters[name] = Cluster(name, cfg, transport, scheduler)
    return clusters
