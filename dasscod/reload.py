"""SIGHUP: read the configuration again and apply what can change in a running daemon.

Safe to change while running: the throttle (`throttle.assets_in_flight`), each cluster's
`max_jobs`, and `log_level`. Anything else (the database, the listener, clusters' transports,
secrets, pipelines, timings) is wired into objects built at start: such a change is refused
with a log line naming the settings, and takes effect at the next restart."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dasscod.settings import Settings


def _is_safe(name: str) -> bool:
    parts = name.split(".")
    return (
        name in ("throttle.assets_in_flight", "log_level")
        or (len(parts) == 3 and parts[0] == "clusters" and parts[2] == "max_jobs")
    )


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


@dataclass(frozen=True)
class Changes:
    #: name -> (old, new) of the settings applied now.
    applied: dict[str, tuple[Any, Any]]
    #: Names of changed settings that need a restart (values not shown: they may be secret).
    refused: list[str]


def compare(old: Settings, new: Settings) -> Changes:
    """What differs between the running settings and the file's, sorted by what may change.
    (SecretStr compares by value, so a changed secret is seen, never shown.)"""
    before = dict(_flatten(old.model_dump()))
    after = dict(_flatten(new.model_dump()))
    changed = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
    return Changes(
        applied={n: (before.get(n), after.get(n)) for n in changed if _is_safe(n)},
        refused=[n for n in changed if not _is_safe(n)],
    )
