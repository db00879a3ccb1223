"""The benchmark's count of MongoDB commands, each attributed to the daemon code that sent it.

PyMongo calls a command listener's `started` in the task that sends the command, so the call
stack at that moment holds the daemon's frames that led to it. Two attributions are taken
from them:

- the *caller*: the store method and the first public daemon function above it, e.g.
  `update track: track.apply from callbacks.finished`, so an operator sees what each command
  per asset is for (docs/performance.md lists them);
- the *source* of periodic work: the timed loops whose cost is fixed per second, whatever the
  number of assets (lease renewals, housekeeping, retention, the metrics snapshot, the job
  watchers' checks, the alerts' checks). Only their reads and the lease renewal count as
  periodic: a write to an asset's documents, by whichever loop, is work for that asset.
  A dispatcher's query of ready assets is never called periodic here, although its sweep is
  timed: in the one-asset run a sweep falls in the window only by chance (once per
  `timing.sweep_s`), whereas a query per asset would be a cost this number must show.

Code that moves or is renamed falls out of the periodic set, which can only make the count
per asset larger, never hide a command.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, FrameType

from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

from dasscod.alerts.notifier import Notifier
from dasscod.leadership import Leadership
from dasscod.metrics import SnapshotRefresher
from dasscod.supervisors.housekeeping import Housekeeping
from dasscod.supervisors.retention import Retention
from dasscod.supervisors.watch import Watcher

#: The timed loops, by the name the benchmark reports their cost under.
PERIODIC: dict[CodeType, str] = {
    Leadership.keep.__code__: "lease renewal",
    Housekeeping.run.__code__: "housekeeping",
    Retention.run.__code__: "retention",
    SnapshotRefresher.run.__code__: "metrics snapshot",
    Watcher.run.__code__: "job watcher",
    Notifier.run.__code__: "alerts",
}
#: Collections holding one document per asset: writes there are the asset's own cost.
ASSET_COLLECTIONS = frozenset({"track", "metadata"})
READS = frozenset({"find", "aggregate", "count", "distinct", "getMore"})

_PACKAGE = Path(__file__).resolve().parents[1]
_STORE = _PACKAGE / "store"
_OWN = Path(__file__).resolve().parent  # the dev stack's frames are the benchmark's own


@dataclass(frozen=True)
class Command:
    at: float
    name: str
    collection: str
    caller: str
    periodic: str | None  # the timed loop that sent it, None for work on an asset


class CommandCounter(CommandListener):
    """Every command the daemon's client starts, with its caller and periodic source."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def started(self, event: CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        collection = target if isinstance(target, str) else "-"
        caller, loop = _attribute(sys._getframe(1))
        periodic = loop
        if loop is not None and event.command_name not in READS and collection in ASSET_COLLECTIONS:
            periodic = None
        self.commands.append(
            Command(time.monotonic(), event.command_name, collection, caller, periodic)
        )

    def succeeded(self, event: CommandSucceededEvent) -> None:
        return None

    def failed(self, event: CommandFailedEvent) -> None:
        return None

    def reset(self) -> None:
        self.commands = []

    @property
    def last_at(self) -> float | None:
        return self.commands[-1].at if self.commands else None

    def asset_path(self) -> list[Command]:
        return [c for c in self.commands if c.periodic is None]

    def periodic(self) -> list[Command]:
        return [c for c in self.commands if c.periodic is not None]


def by_kind(commands: list[Command]) -> dict[str, int]:
    return dict(sorted(Counter(c.name for c in commands).items()))


def by_caller(commands: list[Command]) -> dict[str, int]:
    counts = Counter(f"{c.name} {c.collection}: {c.caller}" for c in commands)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def by_source(commands: list[Command]) -> dict[str, int]:
    counts = Counter(c.periodic or c.caller for c in commands)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


#: Per code object: (its name, a store method?, a public daemon function?), or None when it
#: is neither (library code, the benchmark). Cached: the count must not slow the daemon.
_ROLES: dict[CodeType, tuple[str, bool, bool] | None] = {}


def _role(code: CodeType) -> tuple[str, bool, bool] | None:
    path = Path(code.co_filename)
    role: tuple[str, bool, bool] | None = None
    if path.is_relative_to(_PACKAGE) and not path.is_relative_to(_OWN):
        module = path.parent.name if path.stem == "__init__" else path.stem
        name = f"{module}.{code.co_name}"
        if path.is_relative_to(_STORE):
            if path.stem != "fence" and not code.co_name.startswith("<"):
                role = (name, True, False)
        elif not code.co_name.startswith(("_", "<")):
            role = (name, False, True)
    _ROLES[code] = role
    return role


def _attribute(frame: FrameType | None) -> tuple[str, str | None]:
    """(caller, periodic loop or None) from the daemon's frames on the stack."""
    store_fn: str | None = None
    caller: str | None = None
    loop: str | None = None
    while frame is not None:
        code = frame.f_code
        if loop is None and code in PERIODIC:
            loop = PERIODIC[code]
        role = _ROLES[code] if code in _ROLES else _role(code)
        if role is not None:
            name, in_store, public = role
            if in_store:
                store_fn = name  # the outermost store method: what the caller asked for
            elif public and caller is None:
                caller = name
        frame = frame.f_back
    described = " from ".join(part for part in (store_fn, caller) if part) or "unknown"
    return described, loop
