"""Retention: a settled asset's files are removed once they are no longer needed.

What is removed, per asset: its folder in the work area (the delivered originals, or a
derivative's files received from the cluster), its work folder on every cluster it ran on, and
the state files of every attempt of its jobs there (the batch scripts, their output and exit
files; the direct scheduler's job folders). Then `temporary_files_local` becomes NO. A pull
cluster the daemon cannot reach: the same write records what its agent is to remove there
(`agent_cleanup`); the agent's next report gets it in its answer, removes the files and says
so (`services.agent`).

When:
- a DONE asset once ERDA has it (`erda_sync` YES): ARS and ERDA keep the files from then on.
  Without ARS synchronisation (`[ars]` not configured) nothing archives them, so they are kept;
- an asset in ERROR `intake.retention_days` after it went into ERROR (30 days by default), so
  an operator can look at it or retry it meanwhile.

What is kept: the track and metadata documents (the store), the quarantine folder (an
operator's to empty), and everything of an asset that is not settled. Removal is idempotent
(a crash half-way is finished by the next pass) and a failure for one asset is logged with
back-off while the others go on.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path

import anyio
from anyio import to_thread
from pymongo.errors import PyMongoError

from dasscod.cluster.configured import Cluster
from dasscod.log import get_logger
from dasscod.model import AgentCleanup, Flag, JobStatus, Track, utcnow
from dasscod.pipeline import ACTIVE
from dasscod.repeated import RepeatedErrors
from dasscod.services.launch import scheduler_job_name
from dasscod.store import Stores
from dasscod.watchdog import beat

log = get_logger(__name__)

#: Assets looked at per pass.
BATCH = 200
#: The `control` schema marker of the one-off request to pull clusters' agents for assets
#: cleaned up before retention asked them (`backfill_agent_cleanup`).
AGENT_CLEANUP = "agent_cleanup"


class Retention:
    def __init__(
        self, *, stores: Stores, clusters: Mapping[str, Cluster], work_area: Path,
        retention_days: float, archived_by_ars: bool, interval_s: float,
        stopping: anyio.Event,
    ) -> None:
        self.stores = stores
        self.clusters = clusters
        self.work_area = work_area.absolute()
        self.keep_errors = timedelta(days=retention_days)
        #: Whether ERDA archives DONE assets (ARS sync configured): only then do they go.
        self.archived_by_ars = archived_by_ars
        self.interval_s = interval_s
        self.stopping = stopping
        self.errors = RepeatedErrors(base_s=60.0)

    async def run(self) -> None:
        await self.backfill_agent_cleanup()
        while not self.stopping.is_set():
            await self.run_once()
            beat(self.interval_s)
            with anyio.move_on_after(self.interval_s):
                await self.stopping.wait()

    async def run_once(self, now: datetime | None = None) -> int:
        """Remove the files of every asset that is due; returns how many were cleaned."""
        now = now or utcnow()
        cleaned = 0
        for track in await self.stores.track.holding_files(BATCH):
            if self.stopping.is_set():
                break
            why = self.due(track, now)
            if why is None or not self.errors.due(track.id):
                continue
            try:
                if await self._remove(track, why):
                    cleaned += 1
            except PyMongoError:
                raise
            except Exception as exc:
                self.errors.failed(track.id, exc, "removing an asset's files failed",
                                   asset_guid=track.id)
        return cleaned

    def due(self, track: Track, now: datetime) -> str | None:
        """Why `track`'s files may go now (None: they stay)."""
        if track.temporary_files_local is not Flag.YES:
            return None
        if track.in_flight or any(j.status in ACTIVE for j in track.job_list):
            return None
        if track.jobs_status is JobStatus.DONE:
            if self.archived_by_ars and track.erda_sync is Flag.YES:
                return "done and archived in ERDA"
            return None
        if track.jobs_status is JobStatus.ERROR:
            since = error_since(track)
            if now - since >= self.keep_errors:
                days = self.keep_errors.total_seconds() / 86400
                return f"in ERROR since {since.isoformat(timespec='seconds')} ({days:g} days)"
        return None

    async def backfill_agent_cleanup(self) -> int:
        """Once per database: the assets retention cleaned up before it asked pull clusters'
        agents to remove their files there too (their files were left on those clusters)
        get that request now. Returns how many."""
        pulls = sorted(name for name, cluster in self.clusters.items() if cluster.pull)
        if not pulls or await self.stores.control.schema_version(AGENT_CLEANUP) >= 1:
            return 0
        asked = 0
        async for track in self.stores.track.cleaned_without_agent_cleanup(pulls):
            for_agents = self._for_agents(track)
            if not for_agents:
                continue
            result = await self.stores.track.apply(
                track.id, (), cause="retention: files on pull clusters left by an earlier "
                "version; their agents are asked to remove them", known=track,
                asset_fields={"agent_cleanup": for_agents}, expect={"agent_cleanup": []},
            )  # fmt: skip
            asked += int(result.applied)
        await self.stores.control.set_schema_version(AGENT_CLEANUP, 1)
        if asked:
            log.info("pull clusters' agents asked to remove files of assets cleaned up before",
                     assets=asked)
        return asked

    def _for_agents(self, track: Track) -> list[AgentCleanup]:
        """What each pull cluster's agent is to remove of the asset. The daemon cannot reach
        those clusters: an agent removes the files when told (its report's answer) and says
        so, which takes its cluster off the asset's list."""
        return [
            AgentCleanup(cluster=name, work_dir=str(cluster.workdir(track.id)), names=jobs)
            for name, jobs in _attempts_by_cluster(track).items()
            if (cluster := self.clusters.get(name)) is not None and cluster.pull
        ]

    async def _remove(self, track: Track, why: str) -> bool:
        for name, jobs in _attempts_by_cluster(track).items():
            cluster = self.clusters.get(name)
            if cluster is not None and not cluster.pull:
                await cluster.forget(track.id, jobs)
        for_agents = self._for_agents(track)
        local = _inside(track.temporary_path_local, self.work_area)
        if local is not None:
            await to_thread.run_sync(_remove_tree, local)
        elif track.temporary_path_local:
            log.warning("asset folder outside the work area left in place",
                        asset_guid=track.id, path=track.temporary_path_local)
        fields: dict[str, object] = {"temporary_files_local": Flag.NO,
                                     "temporary_path_local": ""}
        if for_agents:
            fields["agent_cleanup"] = merged_cleanup(track.agent_cleanup, for_agents)
        result = await self.stores.track.apply(
            track.id, (), cause=f"retention: files removed ({why})", known=track,
            asset_fields=fields, expect={"temporary_files_local": Flag.YES},
        )
        self.errors.cleared(track.id)
        if result.applied:
            log.info("asset files removed", asset_guid=track.id, reason=why)
        return result.applied


def error_since(track: Track) -> datetime:
    """When the asset went into ERROR: its last transition to ERROR (its creation if none)."""
    entered = [h.at for h in track.history if h.to == JobStatus.ERROR]
    return max(entered) if entered else track.created_timestamp


def _attempts_by_cluster(track: Track) -> dict[str, list[str]]:
    """Scheduler names of every attempt of every job, by the cluster each ran on (the history
    knows the clusters of earlier attempts; the job its current one)."""
    found: dict[str, set[str]] = {}
    for h in track.history:
        if h.job is not None and h.cluster and h.attempt:
            found.setdefault(h.cluster, set()).add(scheduler_job_name(track.id, h.job, h.attempt))
    for job in track.job_list:
        if job.cluster and job.attempt:
            found.setdefault(job.cluster, set()).add(
                scheduler_job_name(track.id, job.name, job.attempt))
    return {cluster: sorted(names) for cluster, names in found.items()}


def merged_cleanup(pending: list[AgentCleanup], more: list[AgentCleanup]) -> list[AgentCleanup]:
    """`pending` with `more` added: one entry per cluster, its attempts' names united."""
    by_cluster = {c.cluster: c for c in pending}
    for extra in more:
        known = by_cluster.get(extra.cluster)
        names = sorted({*extra.names, *(known.names if known else [])})
        by_cluster[extra.cluster] = extra.model_copy(update={"names": names})
    return [by_cluster[name] for name in sorted(by_cluster)]


def _inside(path: str, root: Path) -> Path | None:
    """`path` if it is a folder strictly inside `root` (never anything else is removed)."""
    if not path:
        return None
    candidate = Path(path).absolute()
    try:
        candidate.relative_to(root)
    except ValueError:
        return None
    return candidate if candidate != root else None


def _remove_tree(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
