"""The daemon: every supervisor in one anyio task group around one MongoDB client.

`dasscod.wiring.build_daemon` builds the parts; `Daemon` runs them. It waits for MongoDB, serves
the listener in both roles, and holds the leader lease; each term as the leader starts in an order
that matters for crash safety: indexes first, then the operators' holds and the throttle are
rebuilt from the store (the store is the only truth; nothing is remembered across restarts in
memory), then the supervisors (intake, one dispatcher per job name, one watcher per cluster,
housekeeping, retention, metrics, alerts, ARS sync).

Stopping (SIGTERM/SIGINT): the `stopping` event is set, every loop finishes the write it is in
and returns, the listener stops accepting connections; whatever has not returned by
`timing.shutdown_s` is cancelled. Nothing is lost by a hard stop either: every state lives in
MongoDB and every job attempt is recognised again by its deterministic scheduler name.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import uvicorn
from pymongo.errors import PyMongoError

from dasscod import metrics, sd_notify, watchdog
from dasscod.cluster.configured import Cluster
from dasscod.cluster.direct.warm import WarmLauncher
from dasscod.coordination import Throttle, Wakeups
from dasscod.leadership import Leadership
from dasscod.log import configure_logging, get_logger
from dasscod.pipeline import Pipeline
from dasscod.reload import Changes, compare
from dasscod.services.control import ConfiguredLimits, ControlService
from dasscod.services.control_reads import ControlReads
from dasscod.settings import ConfigError, Settings, load_settings
from dasscod.store import Stores
from dasscod.store.errors import MongoErrorKind, describe, error_kind, is_fatal, is_outage
from dasscod.store.fence import NotLeader
from dasscod.store.outage import OutageLog

log = get_logger(__name__)

#: Restart backoff of a crashed supervisor: doubles from the first value up to the second.
RESTART_BACKOFF_S = (0.5, 30.0)
#: A supervisor that ran this long before crashing starts again from the shortest backoff.
HEALTHY_RUN_S = 60.0


class InLoopServer(uvicorn.Server):
    """uvicorn serving inside our event loop. Signals belong to the daemon, not to uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(kw_only=True)
class Daemon:
    """The daemon's parts, built and connected by `dasscod.wiring.build_daemon` (the only
    place that builds them); this class runs them: the lease, the listener, the supervisors,
    the stop."""

    settings: Settings
    #: The configuration file SIGHUP reads again (None: $DASSCOD_CONFIG, as at start).
    config_path: Path | None
    #: Set by `stop()`; every supervisor watches it.
    stopping: anyio.Event
    pipelines: Mapping[str, Pipeline]
    stores: Stores
    leadership: Leadership
    outage: OutageLog
    clusters: Mapping[str, Cluster]
    throttle: Throttle
    wakeups: Wakeups
    control: ControlService
    control_reads: ControlReads
    server: uvicorn.Server
    metrics_server: uvicorn.Server | None
    collector: metrics.DaemonCollector
    progress: watchdog.Progress
    watchdog: watchdog.Watchdog
    #: Every supervisor by name; the leader starts each under `supervise`.
    supervisors: Mapping[str, Callable[[], Awaitable[None]]]
    #: Closed once the daemon has stopped (clients of outside services).
    closing: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    #: Set once every supervisor is running and the listener accepts connections.
    ready: anyio.Event = field(default_factory=anyio.Event)
    #: None, or why the daemon stopped when it should not have (`dasscod run` exits 1).
    failure: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._running: set[str] = {"listener"}
        if self.metrics_server is not None:
            self._running.add("metrics listener")
        self._idle = anyio.Event()

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
                metrics.REGISTRY.register(self.collector)
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
                metrics.REGISTRY.unregister(self.collector)
            with anyio.CancelScope(shield=True):
                await self.leadership.release()
                for cluster in self.clusters.values():
                    await cluster.transport.close()
                for close in self.closing:
                    await close()
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
        configured = ConfiguredLimits.of(self.settings)
        self.control.reconfigure(configured)
        self.control_reads.configured = configured
        configure_logging(self.settings.log_level, self.settings.log_format)
        log.info("reload: settings applied",
                 changed={n: {"from": a, "to": b} for n, (a, b) in changes.applied.items()})
        return changes

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


def _leaves(exc: BaseException) -> list[BaseException]:
    """The errors inside `exc`, through any exception groups (task groups wrap theirs)."""
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
