"""What operators are holding back, in memory: paused pipelines, clusters and intake, the
drain, and limits changed at run time.

The `control` collection is the truth (`dasscod.store.control`); this is the copy the
dispatchers, the throttle and intake consult before every claim and every take, so a pause
is in force before the next claim without a query per claim. The control service updates it
in the same request that writes the store, and housekeeping reloads it from the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

PAUSE = "pause"
DRAIN = "drain"
LIMIT = "limit"

#: The limit on assets in flight (`throttle.assets_in_flight`), as a limit hold's target.
ASSETS_IN_FLIGHT = "assets_in_flight"


def cluster_target(name: str) -> str:
    return f"cluster:{name}"


def pipeline_target(name: str) -> str:
    return f"pipeline:{name}"


INTAKE = "intake"


@dataclass(frozen=True)
class Hold:
    """One standing decision: `kind` is pause, drain or limit; `target` what it is about
    ("cluster:local", "pipeline:PIPEHERB0001", "intake", "assets_in_flight"); `value` a
    limit's number."""

    kind: str
    target: str
    by: str
    at: datetime
    reason: str | None = None
    value: int | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.target}"

    def to_document(self) -> dict[str, Any]:
        return {"_id": self.key, "kind": self.kind, "target": self.target, "by": self.by,
                "at": self.at, "reason": self.reason, "value": self.value}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Hold:
        return cls(kind=str(doc["kind"]), target=str(doc["target"]), by=str(doc["by"]),
                   at=doc["at"], reason=doc.get("reason"), value=doc.get("value"))

    def describe(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return f"by {self.by} at {self.at.isoformat(timespec='seconds')}{why}"


@dataclass
class Holds:
    _by_key: dict[str, Hold] = field(default_factory=dict)

    def replace(self, holds: Iterable[Hold]) -> bool:
        """Take the store's holds; True if anything changed."""
        new = {h.key: h for h in holds}
        changed = new != self._by_key
        self._by_key = new
        return changed

    def put(self, hold: Hold) -> None:
        self._by_key[hold.key] = hold

    def remove(self, kind: str, target: str) -> None:
        self._by_key.pop(f"{kind}:{target}", None)

    def get(self, kind: str, target: str) -> Hold | None:
        return self._by_key.get(f"{kind}:{target}")

    def all(self) -> list[Hold]:
        return sorted(self._by_key.values(), key=lambda h: h.key)

    def pipeline_paused(self, name: str) -> bool:
        return f"{PAUSE}:{pipeline_target(name)}" in self._by_key

    def paused_pipelines(self) -> list[str]:
        return sorted(h.target.split(":", 1)[1] for h in self._by_key.values()
                      if h.kind == PAUSE and h.target.startswith("pipeline:"))

    def cluster_paused(self, name: str) -> bool:
        return f"{PAUSE}:{cluster_target(name)}" in self._by_key

    @property
    def draining(self) -> bool:
        return f"{DRAIN}:{DRAIN}" in self._by_key

    def intake_held(self) -> Hold | None:
        """Why intake takes nothing now (paused, or the daemon drains); None: it takes."""
        return self.get(PAUSE, INTAKE) or self.get(DRAIN, DRAIN)

    def limit(self, target: str) -> int | None:
        hold = self.get(LIMIT, target)
        return hold.value if hold is not None else None
