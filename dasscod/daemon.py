"""The daemon: every supervisor in one anyio task group around one MongoDB client.

Start-up order matters for crash safety: indexes first, then the throttle is rebuilt from the
store (the store is the only truth; nothing is remembered across restarts in memory), then the
listener, intake, one dispatcher per job name, one watcher per cluster, and housekeeping.

Stopping (SIGTERM/SIGINT): the `stopping` event is set, every loop finishes the write it is in
and returns, the listener stops accepting connections; whatever has not returned by
`timing.shutdown_s` is cancelled. Nothing is lost by a hard stop either: every state lives in
MongoDB and every job attempt is recognised again by its deterministic scheduler name.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import uvicorn
from pymongo.errors import PyMongoError
from pymongo.monitoring import CommandListener

from dasscod import metrics, sd_notify, watchdog
from dasscod.alerts.channels import Channel, Outbox, SmtpChannel, WebhookChannel
from dasscod.alerts.conditions import DaemonConditions, Thresholds
from dasscod.alerts.notifier import Notifier
from dasscod.ars import ArsClient
from dasscod.ars.health import BreakerState
from dasscod.cluster.configured import Cluster, build_clusters
from dasscod.cluster.direct.warm import WarmLauncher
from dasscod.coordination import Throttle, Wakeups
from dasscod.holds import Holds
from dasscod.leadership import Leadership
from dasscod.listener.app import create_app
from dasscod.listener.observe import metrics_app
from dasscod.listener.serve import listener_config
from dasscod.log import configure_logging, get_logger
from dasscod.model import Track
from dasscod.pipeline import Pipeline, RetryPolicy, pipeline_stages
from dasscod.pipelines import load_pipelines
from dasscod.reload import Changes, compare
from dasscod.services.agent import AgentService
from dasscod.services.control import ConfiguredLimits, ControlService
from dasscod.services.control_reads import ControlReads
from dasscod.services.launch import Launcher
from dasscod.settings import ConfigError, Settings, load_settings
from dasscod.store import Stores
from dasscod.store.errors import MongoErrorKind, describe, error_kind, is_fatal, is_outage
from dasscod.store.fence import NotLeader
from dasscod.store.outage import OutageLog
from dasscod.store.stats import take_snapshot
from dasscod.supervisors.ars_sync import ArsSync, SyncOptions, require_files_in_ars
from dasscod.supervisors.dispatch import Dispatcher
from dasscod.supervisors.housekeeping import Housekeeping
from dasscod.supervisors.intake import IntakeSupervisor
from dasscod.supervisors.retention import Retention
from dasscod.supervisors.watch import Watcher

log = get_logger(__name__)

#: Restart backoff of a crashed supervisor: doubles from the first value up to the second.
RESTART_BACKOFF_S = (0.5, 30.0)
#: A supervisor that ran this long before crashing starts again from the shortest backoff.
HEALTHY_RUN_S = 60.0


class _InLoopServer(uvicorn.Server):
    """uvicorn serving inside our event loop. Signals belong to the daemon, not to uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Daemon:
    """All of the daemon's objects, wired once in `__post_init__` (the only place that builds
    them: stores, clusters, throttle, services, listener, supervisors); `run` only runs them.
    Build one with `build_daemon`."""

    settings: Settings
    #: Extra PyMongo command listeners (the benchmark counts commands with one).
    command_listeners: list[CommandListener] = field(default_factory=list)
    stopping: anyio.Event = field(default_factory=anyio.Event)
    #: Set once every supervisor is running and the listener accepts connections.
    ready: anyio.Event = field(default_factory=anyio.Event)
    #: The configuration file SIGHUP reads again (None: $DASSCOD_CONFIG, as at start).
    config_path: Path | None = None

    def __post_init__(self) -> None:
        self.pipelines: Mapping[str, Pipeline] = load_pipelines(self.settings.pipelines_dir)
        if self.settings.ars is not None:
            # The load job fetches the files from ARS: it waits until they are there.
            self.pipelines = require_files_in_ars(self.pipelines)
        self._check_clusters()
        self.wakeups = Wakeups()
        self._running: set[str] = {"listener"}
        self._idle = anyio.Event()
        #: Operators' pauses, drain and limits (the `control` collection's copy in memory).
        self.holds = Holds()
        self.throttle = Throttle(
            holds=self.holds,
            assets_in_flight=self.settings.throttle.assets_in_flight,
            jobs_per_cluster={n: c.max_jobs for n, c in self.settings.clusters.items()},
            wakeups=self.wakeups,
            stages=pipeline_stages(self.pipelines.values()),
        )
        timing = self.settings.timing
        self.outage = OutageLog()
        #: 0, or why the daemon stopped when it should not have (`dasscod run` exits 1).
        self.failure: str | None = None
        self.stores = Stores.connect(
            self.settings.mongo.uri.get_secret_value(),
            self.settings.mongo.database,
            self.pipelines,
            timeout_s=self.settings.mongo.timeout_s,
            operation_timeout_s=self.settings.mongo.operation_timeout_s,
            policy=RetryPolicy(timing.retry_backoff_s, timing.retry_backoff_max_s),
            listeners=self.command_listeners,
            fence=self._fence,
        )
        self.leadership = Leadership(
            self.stores.lease, self.settings.leader.lease_s, self.outage,
            listener_port=self.settings.listener.port,
        )
        self.stores.track.subscribe(self._on_change)
        self.clusters: dict[str, Cluster] = build_clusters(
            self.settings.clusters, guard=self._fence
        )
        self.launcher = Launcher(
            stores=self.stores,
            clusters=self.clusters,
            pipelines=self.pipelines,
            callback_base=self.settings.listener.callback_base,
            token_secret=self.settings.security.keys(),
            token_ttl_s=self.settings.security.token_ttl_s,
            token_queue_s=timing.max_queue_s,
            token_grace_s=timing.grace_s,
            reachability=self.throttle,
        )
        intake = self.settings.intake
        self.intake = (
            IntakeSupervisor(intake, self.stores, self.pipelines, holds=self.holds)
            if intake.enabled else None
        )
        configured = ConfiguredLimits(
            assets_in_flight=self.settings.throttle.assets_in_flight,
            jobs_per_cluster={n: c.max_jobs for n, c in self.settings.clusters.items()},
        )
        self.control = ControlService(
            stores=self.stores, holds=self.holds, throttle=self.throttle,
            clusters=self.clusters, pipelines=self.pipelines, configured=configured,
            launcher=self.launcher, released=self._released,
        )
        self.control_reads = control_reads = ControlReads(
            stores=self.stores, holds=self.holds, throttle=self.throttle,
            clusters=self.clusters, configured=configured,
        )
        self.server = _InLoopServer(
            listener_config(
                create_app(
                    self.stores,
                    self.settings.security.keys(),
                    intake=self.intake,
                    intake_token=(
                        intake.api_token.get_secret_value() if intake.api_token else None
                    ),
                    intake_max_mb=intake.api_max_mb,
                    files_root=intake.work_area.absolute(),
                    agent=AgentService(self.stores, self.clusters, self.launcher.job_spec),
                    slots=self.throttle,
                    control=(self.control, control_reads),
                    control_tokens=self.settings.control.named(),
                    role=lambda: self.leadership.role,
                    metrics_route=self.settings.metrics.enabled
                    and self.settings.metrics.port is None,
                    docs=self.settings.listener.docs,
                ),
                self.settings.listener,
                graceful_s=max(1, int(timing.shutdown_s / 2)),
            )
        )

        self.metrics = metrics.DaemonCollector(
            clusters=lambda: {n: self.throttle.reachable(n) for n in self.clusters},
            breaker_open=self._breaker_open,
            folders=[intake.folder, intake.work_area, intake.quarantine] if intake.enabled else [],
            leader=lambda: self.leadership.leading,
        )
        self.snapshots = metrics.SnapshotRefresher(
            self.metrics,
            lambda previous: take_snapshot(self.stores.track.collection, previous,
                                           ars=self.settings.ars is not None),
            interval_s=self.settings.metrics.snapshot_s,
            stopping=self.stopping,
        )
        self.progress = watchdog.Progress()
        self.watchdog = watchdog.Watchdog(self.progress, stopping=self.stopping,
                                          status=self._status_line)
        self.metrics_server: _InLoopServer | None = None
        if self.settings.metrics.enabled and self.settings.metrics.port is not None:
            self.metrics_server = _InLoopServer(uvicorn.Config(
                metrics_app(), host=self.settings.metrics.host, port=self.settings.metrics.port,
                lifespan="off", log_config=None, access_log=False,
                timeout_graceful_shutdown=1,
            ))
            self._running.add("metrics listener")
        self.dispatchers: dict[str, Dispatcher] = {
            job: Dispatcher(
                job,
                stores=self.stores,
                pipelines=self.pipelines,
                clusters=self.clusters,
                launcher=self.launcher,
                throttle=self.throttle,
                wakeups=self.wakeups,
                stopping=self.stopping,
                sweep_s=timing.sweep_s,
            )
            for job in self.job_names
        }
        self.ars_sync: ArsSync | None = None
        if self.settings.ars is not None:
            self.ars_sync = ArsSync(
                self.stores,
                ArsClient(self.settings.ars),
                stopping=self.stopping,
                options=SyncOptions(**self.settings.ars_sync.model_dump()),
            )
        #: Every supervisor by name; `run` starts each under `supervise`.
        self.supervisors = self._build_supervisors()

    def _notifier(self) -> Notifier:
        """The built-in notifier on the conditions the metrics' collector sees."""
        cfg = self.settings.alerts
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
        intake = self.settings.intake
        sense = DaemonConditions(
            self.metrics,
            clusters=lambda: {n: self.throttle.reachable(n) for n in self.clusters},
            breaker_open=self._breaker_open,
            folders=[intake.folder, intake.work_area, intake.quarantine] if intake.enabled else [],
            thresholds=Thresholds(
                cluster_down_s=cfg.cluster_down_s, ars_down_s=cfg.ars_down_s,
                restarts=cfg.restarts, restarts_window_s=cfg.window_s,
                no_progress_s=cfg.no_progress_s, disk_free_min=cfg.disk_free_min,
            ),
        )
        return Notifier(self.stores.alerts, Outbox(channels), sense, window_s=cfg.window_s,
                        check_s=cfg.check_s, stopping=self.stopping,
                        source=f"dasscod on {socket.gethostname()}")

    def _status_line(self) -> str:
        """What `systemctl status` shows while the daemon runs."""
        if not self.leadership.leading:
            return "standby: another daemon holds the leader lease"
        jobs = sum(self.throttle.active_jobs(name) for name in self.clusters)
        return f"running {jobs} job{'' if jobs == 1 else 's'}"

    def _breaker_open(self) -> bool | None:
        if self.ars_sync is None:
            return None
        return self.ars_sync.breaker.state is not BreakerState.CLOSED

    def _check_clusters(self) -> None:
        """Every job must be able to run somewhere: a pipeline naming only unknown clusters is
        a configuration error, found at start-up rather than as a stuck asset later."""
        problems = [
            f"pipeline {p.name} job {j.name} runs on {', '.join(j.clusters)}"
            for p in self.pipelines.values()
            for j in p.jobs
            if not any(c in self.settings.clusters for c in j.clusters)
        ]
        if problems:
            configured = ", ".join(self.settings.clusters) or "none"
            raise ValueError(
                "no configured cluster for: " + "; ".join(problems)
                + f" (configured clusters: {configured}); add the cluster under [clusters]"
            )

    def _on_change(self, track: Track) -> None:
        """Every transition this process writes: keep the throttle's counts current and wake
        the dispatchers of the jobs it made ready."""
        self.throttle.observe(track)
        if self.ars_sync is not None:
            self.ars_sync.offer(track)
        for job in track.ready:
            dispatcher = self.dispatchers.get(job)
            if dispatcher is not None:
                dispatcher.offer(track)
            else:
                self.wakeups.notify(job)

    def _released(self) -> None:
        """An operator lifted a hold or raised a limit: every dispatcher asks the store
        again, and those the throttle stopped try once more."""
        for dispatcher in self.dispatchers.values():
            dispatcher.resweep()
        self.throttle.wake_blocked()

    @property
    def job_names(self) -> list[str]:
        return sorted({j.name for p in self.pipelines.values() for j in p.jobs})

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Run until `stop()` (or SIGTERM/SIGINT when `handle_signals` was used): a standby
        until this daemon holds the leader lease, then the leader until it stops or loses it
        (then a standby again)."""
        try:
            await self._wait_for_mongodb()
            if self.stopping.is_set():
                return
            if self.settings.metrics.enabled:
                metrics.REGISTRY.register(self.metrics)
            async with anyio.create_task_group() as tg:
                # The listener runs in both roles: a standby answers /healthz and /readyz.
                tg.start_soon(self._serve_listener)
                if self.metrics_server is not None:
                    tg.start_soon(self._serve_metrics)
                tg.start_soon(self.watchdog.run)
                while await self.leadership.acquire(self.stopping):
                    await self._term()
                self._begin_stop()
                with anyio.move_on_after(self.settings.timing.shutdown_s - 1):
                    await self._wait_idle()
                tg.cancel_scope.cancel()
        finally:
            with contextlib.suppress(KeyError):  # never registered: stopped before start
                metrics.REGISTRY.unregister(self.metrics)
            with anyio.CancelScope(shield=True):
                await self.leadership.release()
                for cluster in self.clusters.values():
                    await cluster.transport.close()
                if self.ars_sync is not None:
                    await self.ars_sync.client.aclose()
                await self.stores.close()
            log.info("stopped")

    async def _term(self) -> None:
        """One term as the leader, until the daemon stops or the lease is lost. Losing it
        cancels every supervisor at once: the fence already refuses their writes."""
        try:
            await self._lead()
        except* NotLeader:
            pass
        except* PyMongoError as group:
            self._mongo_failed(_leaves(group)[0])
        if not self.stopping.is_set():
            log.warning("no longer the leader; standing by", holder=self.leadership.holder)

    async def _lead(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._hold_lease, tg.cancel_scope)
            await self.stores.ensure_indexes()
            await self.control.reload()  # pauses and limits survive restarts
            self.throttle.rebuild(await self.stores.track.in_flight(), queried_at=time.monotonic())
            for cluster in self.clusters.values():
                # Warm before the first job: one claimed right after a restart starts warm.
                warm = getattr(cluster.scheduler, "warm", None)
                if isinstance(warm, WarmLauncher):
                    tg.start_soon(warm.start, cluster.settings.python, cluster.settings.env)
            self._running.update(self.supervisors)
            for name, factory in self.supervisors.items():
                tg.start_soon(self.supervise, name, factory)
            tg.start_soon(self._announce_ready)
            await self.stopping.wait()
            self._begin_stop()
            with anyio.move_on_after(self.settings.timing.shutdown_s - 1) as scope:
                await self._wait_idle(supervisors_only=True)
            if scope.cancelled_caught:
                log.warning("supervisors did not stop in time; cancelling them")
            tg.cancel_scope.cancel()

    async def _hold_lease(self, term: anyio.CancelScope) -> None:
        try:
            await self.leadership.keep()
        except PyMongoError as exc:  # keep() raises only what no retry can fix
            self._mongo_failed(exc)
        term.cancel()

    def _fence(self) -> None:
        self.leadership.check()

    def _begin_stop(self) -> None:
        if self.server.should_exit:
            return
        log.info("stopping", grace_s=self.settings.timing.shutdown_s)
        sd_notify.notify("STOPPING=1")
        self.server.should_exit = True
        if self.metrics_server is not None:
            self.metrics_server.should_exit = True
        self.wakeups.notify_all()

    def fail(self, reason: str) -> None:
        """Stop because something no retry can fix went wrong: `dasscod run` exits non-zero."""
        if self.failure is None:
            self.failure = reason
            log.error("stopping on an error", reason=reason)
        self.stop()

    def _mongo_failed(self, exc: BaseException) -> None:
        if is_fatal(exc):
            self.fail(f"MongoDB refused us: {describe(exc)}; check the user, password and "
                      "database in mongo.uri (DASSCOD_MONGO__URI)")
        else:
            self.outage.began(describe(exc))

    def stop(self) -> None:
        self.stopping.set()

    async def handle_signals(self) -> None:
        """SIGTERM/SIGINT: a graceful stop (a second one is not needed: the stop is bounded by
        `timing.shutdown_s`). SIGHUP: reload the settings that may change while running."""
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("signal received", signal=signal.Signals(signum).name)
                if signum == signal.SIGHUP:
                    self.reload()
                    continue
                self.stop()
                return

    def reload(self) -> Changes | None:
        """Apply the configuration file's throttle limits, clusters' `max_jobs` and log level;
        refuse (and log) every other change. None when the file cannot be read."""
        try:
            new = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("reload refused: the configuration is not valid; nothing changed",
                      error=str(exc))
            return None
        changes = compare(self.settings, new)
        if changes.refused:
            log.warning("reload: these settings change only at a restart; not applied",
                        settings=changes.refused)
        if not changes.applied:
            log.info("reload: no setting to apply changed")
            return changes
        self.settings.log_level = new.log_level
        self.settings.throttle.assets_in_flight = new.throttle.assets_in_flight
        for name, cluster in self.settings.clusters.items():
            if name in new.clusters:
                cluster.max_jobs = new.clusters[name].max_jobs
        configured = ConfiguredLimits(
            assets_in_flight=self.settings.throttle.assets_in_flight,
            jobs_per_cluster={n: c.max_jobs for n, c in self.settings.clusters.items()},
        )
        self.control.reconfigure(configured)
        self.control_reads.configured = configured
        configure_logging(self.settings.log_level, self.settings.log_format)
        log.info("reload: settings applied",
                 changed={n: {"from": a, "to": b} for n, (a, b) in changes.applied.items()})
        return changes

    def _build_supervisors(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """Every supervisor, by name (part of the wiring: called once, from __post_init__)."""
        timing = self.settings.timing
        supervisors: dict[str, Callable[[], Awaitable[None]]] = {}
        if self.intake is not None:
            supervisors["intake"] = functools.partial(self.intake.run, self.stopping)
        for job, dispatcher in self.dispatchers.items():
            supervisors[f"dispatch.{job}"] = dispatcher.run
        for cluster in self.clusters.values():
            watcher = Watcher(
                cluster,
                stores=self.stores,
                pipelines=self.pipelines,
                launcher=self.launcher,
                timing=timing,
                stopping=self.stopping,
            )
            supervisors[f"watch.{cluster.name}"] = watcher.run
        housekeeping = Housekeeping(
            stores=self.stores,
            throttle=self.throttle,
            interval_s=timing.housekeeping_s,
            stopping=self.stopping,
            also=self.control.reload,
        )
        supervisors["housekeeping"] = housekeeping.run
        intake = self.settings.intake
        retention = Retention(
            stores=self.stores, clusters=self.clusters, work_area=intake.work_area,
            retention_days=intake.retention_days, archived_by_ars=self.ars_sync is not None,
            interval_s=timing.housekeeping_s, stopping=self.stopping,
        )  # fmt: skip
        supervisors["retention"] = retention.run
        if self.settings.metrics.enabled or self.settings.alerts.enabled:
            supervisors["metrics"] = self.snapshots.run
        if self.settings.alerts.enabled:
            supervisors["alerts"] = self._notifier().run
        if self.ars_sync is not None:
            supervisors["ars_sync"] = self.ars_sync.run
        return supervisors

    def _finished(self, name: str) -> None:
        self._running.discard(name)
        self._idle.set()  # _wait_idle looks again

    async def supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run one supervisor until the daemon stops; restart it with backoff if it crashes,
        so one broken part (a cluster, a malformed document) never takes the daemon down."""
        backoff = RESTART_BACKOFF_S[0]
        logger = log.bind(supervisor=name)
        watchdog.supervised_as(self.progress, name)
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                try:
                    await factory()
                except Exception as exc:
                    if time.monotonic() - started > HEALTHY_RUN_S:
                        backoff = RESTART_BACKOFF_S[0]
                    leaves = _leaves(exc)  # a supervisor's own task group wraps its errors
                    kinds = {error_kind(e) for e in leaves}
                    if all(isinstance(e, NotLeader) for e in leaves):
                        # The lease ran out under it; the lease keeper ends this term.
                        logger.info("not the leader any more; waiting to stand by")
                    elif MongoErrorKind.FATAL in kinds:
                        self._mongo_failed(next(e for e in leaves if is_fatal(e)))
                    elif MongoErrorKind.OUTAGE in kinds and all(
                        isinstance(e, NotLeader) or is_outage(e) for e in leaves
                    ):
                        # One warning for the whole outage (OutageLog), not one per supervisor.
                        self.outage.began(describe(next(e for e in leaves if is_outage(e))))
                    else:
                        logger.exception("supervisor crashed; restarting", restart_in_s=backoff)
                        metrics.SUPERVISOR_RESTARTS.labels(supervisor=name).inc()
                    self.progress.beat(name, backoff)  # waiting to restart is not hanging
                    with anyio.move_on_after(backoff):
                        await self.stopping.wait()
                    backoff = min(backoff * 2, RESTART_BACKOFF_S[1])
                else:
                    if not self.stopping.is_set():
                        logger.warning("supervisor returned early; restarting")
        finally:
            self.progress.forget(name)
            self._finished(name)

    async def _serve_listener(self) -> None:
        try:
            await self.server.serve()
        except SystemExit:  # uvicorn's answer to a port it cannot bind; we decide the exit
            pass
        finally:
            self._finished("listener")
        if not self.stopping.is_set():
            # uvicorn returns or raises SystemExit when it cannot bind its port.
            self.fail(
                f"listener stopped unexpectedly: is {self.settings.listener.host}:"
                f"{self.settings.listener.port} free?"
            )

    async def _serve_metrics(self) -> None:
        assert self.metrics_server is not None
        try:
            await self.metrics_server.serve()
        except SystemExit:  # as for the listener
            pass
        finally:
            self._finished("metrics listener")
        if not self.stopping.is_set():
            self.fail(f"metrics listener stopped unexpectedly: is {self.settings.metrics.host}:"
                      f"{self.settings.metrics.port} free?")

    async def _announce_ready(self) -> None:
        while not self.server.started:
            if self.stopping.is_set():
                return
            await anyio.sleep(0.01)  # uvicorn offers no event for "bound"; poll briefly
        log.info(
            "ready",
            listener=self.settings.listener.callback_base,
            clusters=sorted(self.clusters),
            pipelines=sorted(self.pipelines),
        )
        self.ready.set()
        sd_notify.notify("READY=1")

    async def _wait_idle(self, *, supervisors_only: bool = False) -> None:
        listeners = {"listener", "metrics listener"}
        while self._running - listeners if supervisors_only else self._running:
            self._idle = anyio.Event()
            await self._idle.wait()

    async def _wait_for_mongodb(self) -> None:
        """MongoDB may come up after us (systemd ordering, a restart): wait, logging once per
        attempt with growing gaps, rather than crash-looping. systemd is told what we wait for
        and given more start-up time for each attempt, so TimeoutStartSec= does not kill us.
        A refusal no retry can fix (a wrong password, a bad URI) stops the daemon."""
        delay = 1.0
        timeout_s = self.settings.mongo.timeout_s
        while not self.stopping.is_set():
            ping = await self.stores.ping()
            if ping.fatal:
                self.fail(f"MongoDB refused us: {ping.error}; check the user, password and "
                          "database in mongo.uri (DASSCOD_MONGO__URI)")
                return
            if ping:
                return
            log.warning("MongoDB unreachable; waiting", database=self.settings.mongo.database,
                        error=ping.error, retry_in_s=delay)
            sd_notify.notify(
                f"STATUS=waiting for MongoDB: {ping.error}",
                # This wait, the next ping and some slack.
                f"EXTEND_TIMEOUT_USEC={int((delay + timeout_s + 5) * 1_000_000)}",
            )
            with anyio.move_on_after(delay):
                await self.stopping.wait()
            delay = min(delay * 2, 30.0)


def build_daemon(
    settings: Settings,
    *,
    command_listeners: list[CommandListener] | None = None,
    config_path: Path | None = None,
) -> Daemon:
    """The daemon for `settings`, every object built and wired, nothing started yet."""
    return Daemon(settings, command_listeners=command_listeners or [], config_path=config_path)


async def run_daemon(settings: Settings, config_path: Path | None = None) -> str | None:
    """`dasscod run`: the daemon plus signal handling. Returns why the daemon stopped when it
    should not have (`dasscod run` then exits 1), None after a requested stop."""
    daemon = build_daemon(settings, config_path=config_path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.handle_signals)
        await daemon.run()
        tg.cancel_scope.cancel()
    return daemon.failure


def _leaves(exc: BaseException) -> list[BaseException]:
    """The errors inside `exc`, through any exception groups (task groups wrap theirs)."""
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
