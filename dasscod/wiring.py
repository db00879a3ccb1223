"""The one place the daemon is put together: `build_daemon(settings)` builds every shared object
(stores, clusters, throttle, services, listener) and every supervisor, connects them, and hands
them to a `Daemon`, which only runs them (dasscod/daemon.py).

Nothing here does I/O or starts anything: building a daemon for a bad configuration fails here,
before a single connection is opened. The order below is the order of dependence; each object is
built once, after everything it needs, so no part is wired to another that does not exist yet.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import anyio
from pymongo.monitoring import CommandListener

from dasscod import metrics, watchdog
from dasscod.alerts.channels import Channel, Outbox, SmtpChannel, WebhookChannel
from dasscod.alerts.conditions import DaemonConditions, Thresholds
from dasscod.alerts.notifier import Notifier
from dasscod.ars import ArsClient
from dasscod.ars.health import BreakerState
from dasscod.cluster.configured import build_clusters
from dasscod.coordination import Throttle, Wakeups
from dasscod.daemon import Daemon, InLoopServer
from dasscod.holds import Holds
from dasscod.leadership import Leadership
from dasscod.listener.app import create_app
from dasscod.listener.observe import metrics_app
from dasscod.listener.serve import listener_config
from dasscod.model import Track
from dasscod.pipeline import Pipeline, RetryPolicy, pipeline_stages
from dasscod.pipelines import load_pipelines
from dasscod.services.agent import AgentService
from dasscod.services.control import ConfiguredLimits, ControlService
from dasscod.services.control_reads import ControlReads
from dasscod.services.launch import Launcher
from dasscod.settings import AlertSettings, Settings
from dasscod.store import Stores
from dasscod.store.outage import OutageLog
from dasscod.store.stats import take_snapshot
from dasscod.supervisors.ars_sync import ArsSync, require_files_in_ars
from dasscod.supervisors.dispatch import Dispatcher
from dasscod.supervisors.housekeeping import Housekeeping
from dasscod.supervisors.intake import IntakeSupervisor
from dasscod.supervisors.retention import Retention
from dasscod.supervisors.watch import Watcher

Supervisors = dict[str, Callable[[], Awaitable[None]]]


def build_daemon(
    settings: Settings,
    *,
    command_listeners: list[CommandListener] | None = None,
    config_path: Path | None = None,
) -> Daemon:
    """The daemon for `settings`, every object built and connected, nothing started yet.

    `command_listeners`: extra PyMongo command listeners (the benchmark counts commands with
    one). `config_path`: the file SIGHUP reads again (None: $DASSCOD_CONFIG, as at start).
    Raises ValueError when a pipeline's job has no configured cluster to run on."""
    timing = settings.timing
    pipelines = _pipelines(settings)
    stopping = anyio.Event()
    wakeups = Wakeups()
    #: Operators' pauses, drain and limits (the `control` collection's copy in memory).
    holds = Holds()
    configured = ConfiguredLimits.of(settings)
    throttle = Throttle(
        holds=holds,
        assets_in_flight=configured.assets_in_flight,
        jobs_per_cluster=configured.jobs_per_cluster,
        wakeups=wakeups,
        stages=pipeline_stages(pipelines.values()),
    )
    outage = OutageLog()

    # Every store write and every scheduler command first asks the lease whether this daemon
    # may act; the lease lives in the stores it guards, so the check is bound late, once.
    def fence() -> None:
        leadership.check()

    stores = Stores.from_settings(
        settings.mongo,
        pipelines,
        policy=RetryPolicy(timing.retry_backoff_s, timing.retry_backoff_max_s),
        listeners=command_listeners or [],
        fence=fence,
    )
    leadership = Leadership(stores.lease, settings.leader.lease_s, outage,
                            listener_port=settings.listener.port)
    clusters = build_clusters(settings.clusters, guard=fence)
    launcher = Launcher(
        stores=stores,
        clusters=clusters,
        pipelines=pipelines,
        callback_base=settings.listener.callback_base,
        token_secret=settings.security.keys(),
        token_ttl_s=settings.security.token_ttl_s,
        token_queue_s=timing.max_queue_s,
        token_grace_s=timing.grace_s,
        reachability=throttle,
    )
    dispatchers = {
        job: Dispatcher(job, stores=stores, pipelines=pipelines, clusters=clusters,
                        launcher=launcher, throttle=throttle, wakeups=wakeups,
                        stopping=stopping, sweep_s=timing.sweep_s)
        for job in sorted({j.name for p in pipelines.values() for j in p.jobs})
    }
    ars_sync = (
        ArsSync(stores, ArsClient(settings.ars), stopping=stopping,
                options=settings.ars_sync)
        if settings.ars is not None else None
    )
    stores.track.subscribe(_change_router(throttle, ars_sync, dispatchers, wakeups))

    def released() -> None:
        """An operator lifted a hold or raised a limit: every dispatcher asks the store
        again, and those the throttle stopped try once more."""
        for dispatcher in dispatchers.values():
            dispatcher.resweep()
        throttle.wake_blocked()

    control = ControlService(
        stores=stores, holds=holds, throttle=throttle, clusters=clusters, pipelines=pipelines,
        configured=configured, launcher=launcher, released=released,
    )
    control_reads = ControlReads(stores=stores, holds=holds, throttle=throttle,
                                 clusters=clusters, configured=configured)
    intake_settings = settings.intake
    intake = (
        IntakeSupervisor(intake_settings, stores, pipelines, holds=holds)
        if intake_settings.enabled else None
    )
    server = InLoopServer(listener_config(
        create_app(
            stores,
            settings.security.keys(),
            intake=intake,
            intake_token=(intake_settings.api_token.get_secret_value()
                          if intake_settings.api_token else None),
            intake_max_mb=intake_settings.api_max_mb,
            intake_at_once=intake_settings.api_uploads_at_once,
            files_root=intake_settings.work_area.absolute(),
            agent=AgentService(stores, clusters, launcher.job_spec, grace_s=timing.grace_s),
            slots=throttle,
            control=(control, control_reads),
            control_tokens=settings.control.named(),
            role=lambda: leadership.role,
            metrics_route=settings.metrics.enabled and settings.metrics.port is None,
            docs=settings.listener.docs,
        ),
        settings.listener,
        graceful_s=max(1, int(timing.shutdown_s / 2)),
    ))
    metrics_server = (
        # Its own address, plain HTTP, and the listener's bounds on connections, heads and
        # bodies: an operator may open it to a network (a Prometheus elsewhere).
        InLoopServer(listener_config(metrics_app(), settings.listener.model_copy(update={
            "host": settings.metrics.host, "port": settings.metrics.port,
            "tls_certfile": None, "tls_keyfile": None}), graceful_s=1))
        if settings.metrics.enabled and settings.metrics.port is not None else None
    )

    def reachable() -> dict[str, bool]:
        return {name: throttle.reachable(name) for name in clusters}

    def breaker_open() -> bool | None:
        return None if ars_sync is None else ars_sync.breaker.state is not BreakerState.CLOSED

    folders = ([intake_settings.folder, intake_settings.work_area, intake_settings.quarantine]
               if intake_settings.enabled else [])
    collector = metrics.DaemonCollector(clusters=reachable, breaker_open=breaker_open,
                                        folders=folders, leader=lambda: leadership.leading)
    snapshots = metrics.SnapshotRefresher(
        collector,
        lambda previous: take_snapshot(stores.track.collection, previous,
                                       ars=settings.ars is not None),
        interval_s=settings.metrics.snapshot_s,
        stopping=stopping,
    )
    progress = watchdog.Progress()

    def status_line() -> str:
        """What `systemctl status` shows while the daemon runs."""
        if not leadership.leading:
            return "standby: another daemon holds the leader lease"
        jobs = sum(throttle.active_jobs(name) for name in clusters)
        return f"running {jobs} job{'' if jobs == 1 else 's'}"

    supervisors: Supervisors = {}
    if intake is not None:
        supervisors["intake"] = functools.partial(intake.run, stopping)
    for job, dispatcher in dispatchers.items():
        supervisors[f"dispatch.{job}"] = dispatcher.run
    for cluster in clusters.values():
        watcher = Watcher(cluster, stores=stores, pipelines=pipelines, launcher=launcher,
                          timing=timing, stopping=stopping)
        supervisors[f"watch.{cluster.name}"] = watcher.run
    supervisors["housekeeping"] = Housekeeping(
        stores=stores, throttle=throttle, interval_s=timing.housekeeping_s, stopping=stopping,
        also=control.reload,
    ).run
    supervisors["retention"] = Retention(
        stores=stores, clusters=clusters, work_area=intake_settings.work_area,
        retention_days=intake_settings.retention_days, archived_by_ars=ars_sync is not None,
        interval_s=timing.housekeeping_s, stopping=stopping,
    ).run
    if settings.metrics.enabled or settings.alerts.enabled:
        supervisors["metrics"] = snapshots.run
    if settings.alerts.enabled:
        conditions = DaemonConditions(collector, clusters=reachable, breaker_open=breaker_open,
                                      folders=folders, thresholds=_thresholds(settings.alerts))
        supervisors["alerts"] = _notifier(settings.alerts, stores, conditions, stopping).run
    if ars_sync is not None:
        supervisors["ars_sync"] = ars_sync.run

    return Daemon(
        settings=settings,
        config_path=config_path,
        stopping=stopping,
        pipelines=pipelines,
        stores=stores,
        leadership=leadership,
        outage=outage,
        clusters=clusters,
        throttle=throttle,
        wakeups=wakeups,
        control=control,
        control_reads=control_reads,
        server=server,
        metrics_server=metrics_server,
        collector=collector,
        progress=progress,
        watchdog=watchdog.Watchdog(progress, stopping=stopping, status=status_line),
        supervisors=supervisors,
        closing=[ars_sync.client.aclose] if ars_sync is not None else [],
    )


async def run_daemon(settings: Settings, config_path: Path | None = None) -> str | None:
    """`dasscod run`: the daemon plus signal handling. Returns why the daemon stopped when it
    should not have (`dasscod run` then exits 1), None after a requested stop."""
    daemon = build_daemon(settings, config_path=config_path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.handle_signals)
        await daemon.run()
        tg.cancel_scope.cancel()
    return daemon.failure


def _pipelines(settings: Settings) -> Mapping[str, Pipeline]:
    """The configured pipelines, checked against the configured clusters: a job that can run
    nowhere is a configuration error found at start-up, not a stuck asset found later."""
    pipelines: Mapping[str, Pipeline] = load_pipelines(settings.pipelines_dir)
    if settings.ars is not None:
        # The load job fetches the files from ARS: it waits until they are there.
        pipelines = require_files_in_ars(pipelines)
    problems = [
        f"pipeline {p.name} job {j.name} runs on {', '.join(j.clusters)}"
        for p in pipelines.values()
        for j in p.jobs
        if not any(c in settings.clusters for c in j.clusters)
    ]
    if problems:
        configured = ", ".join(settings.clusters) or "none"
        raise ValueError(
            "no configured cluster for: " + "; ".join(problems)
            + f" (configured clusters: {configured}); add the cluster under [clusters]"
        )
    return pipelines


def _change_router(
    throttle: Throttle,
    ars_sync: ArsSync | None,
    dispatchers: Mapping[str, Dispatcher],
    wakeups: Wakeups,
) -> Callable[[Track], None]:
    """What every transition this process writes sets off: the throttle's counts stay current,
    ARS sync sees the asset, and the dispatchers of the jobs it made ready wake."""

    def on_change(track: Track) -> None:
        throttle.observe(track)
        if ars_sync is not None:
            ars_sync.offer(track)
        for job in track.ready:
            dispatcher = dispatchers.get(job)
            if dispatcher is not None:
                dispatcher.offer(track)
            else:
                wakeups.notify(job)

    return on_change


def _thresholds(cfg: AlertSettings) -> Thresholds:
    return Thresholds(
        cluster_down_s=cfg.cluster_down_s, ars_down_s=cfg.ars_down_s, restarts=cfg.restarts,
        restarts_window_s=cfg.window_s, no_progress_s=cfg.no_progress_s,
        disk_free_min=cfg.disk_free_min,
    )


def _notifier(
    cfg: AlertSettings, stores: Stores, conditions: DaemonConditions, stopping: anyio.Event
) -> Notifier:
    """The built-in notifier: the conditions it watches, sent to the configured channels."""
    channels: list[Channel] = []
    if cfg.webhook_url is not None:
        channels.append(WebhookChannel(cfg.webhook_url.get_secret_value()))
    if cfg.smtp_host is not None:
        channels.append(SmtpChannel(
            host=cfg.smtp_host, port=cfg.smtp_port, sender=cfg.mail_from,
            recipients=cfg.mail_to, username=cfg.smtp_username,
            password=cfg.smtp_password.get_secret_value() if cfg.smtp_password else None,
            starttls=cfg.smtp_starttls, tls=cfg.smtp_tls,
        ))
    return Notifier(stores.alerts, Outbox(channels), conditions, window_s=cfg.window_s,
                    check_s=cfg.check_s, stopping=stopping,
                    source=f"dasscod on {socket.gethostname()}")

