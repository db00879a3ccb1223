"""A dispatcher wired as the daemon wires it (launcher, throttle, wake-ups), for tests that
drive one by hand."""

from __future__ import annotations

from collections.abc import Mapping

import anyio

from dasscod.cluster.configured import Cluster
from dasscod.coordination import Throttle
from dasscod.pipeline import Pipeline
from dasscod.services.launch import Launcher
from dasscod.store import Stores
from dasscod.supervisors.dispatch import Dispatcher


def load_dispatcher(
    stores: Stores,
    clusters: Mapping[str, Cluster],
    pipelines: Mapping[str, Pipeline],
    throttle: Throttle,
    *,
    stopping: anyio.Event | None = None,
    sweep_s: float = 30,
) -> Dispatcher:
    """The dispatcher of the `load` job, submitting through a real launcher (callbacks go to
    a closed port: these tests watch the store, not the jobs)."""
    launcher = Launcher(stores=stores, clusters=clusters, pipelines=pipelines,
                        callback_base="http://127.0.0.1:9/api/v1",
                        token_secret="dispatch-test-secret-0123456789abcdef", token_ttl_s=60,
                        reachability=throttle)
    return Dispatcher("load", stores=stores, pipelines=pipelines, clusters=clusters,
                      launcher=launcher, throttle=throttle, wakeups=throttle.wakeups,
                      stopping=stopping or anyio.Event(), sweep_s=sweep_s)
