"""The `queues` tags of a track document: one multikey index answers every "which assets wait
for X" query of the daemon's supervisors.

An index per flag would serve the same queries, but every index is work on every write of the
document, and most tags are held by few assets at a time (the states that mean "something is
to be done"), so one small index of tags is cheaper to keep than nine mostly idle ones. The
tags are derived from the document's fields in the same guarded write that changes them
(`pipeline.derive`), like `ready`.

Two families of tags serve the operator's reads (`dasscod ls`, `dasscod errors`) rather than a
supervisor: `status:<jobs_status>` and `at:<job>` (the jobs the asset is at: running, waiting,
failed or cancelled), and `ars_error` for an asset ARS refused. Each asset holds one status tag
and at most a few others, so the index stays about twice the size of the collection and a
filtered, paged listing never scans the collection.

`cleanup:<cluster>` marks a settled asset whose files on a pull cluster that cluster's agent
has yet to remove (retention asks; the agent's report answer carries the request).

`has_new_file` keeps its own index: a reported file sets it with a `$push` guard of its own
(`TrackStore.add_file`), outside the planned transitions that derive the tags.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from dasscod.model import Flag, Track

#: The track's ARS flags (docs/domain.md): a Literal, so that mypy catches a misspelt one.
ArsFlag = Literal["is_in_ars", "has_new_file", "has_open_share", "erda_sync", "update_metadata"]
#: The fields an ARS queue may filter on besides its flag.
QueueField = ArsFlag | Literal["available_for_services"]

#: An asset some of whose jobs have started and whose pipeline has not ended.
IN_FLIGHT = "in_flight"
#: An asset held back by a timed pause (`available_for_services` = PAUSED).
PAUSED = "paused"
#: An asset whose last ARS call was refused (`ars_error` is set).
ARS_ERROR = "ars_error"
#: A settled asset (DONE or ERROR) whose files are still on disk: retention's queue.
HOLDS_FILES = "holds_files"

#: The ARS sync's flags, and the values its steps look for (the others are either the steady
#: state or no step's business).
TAGGED_FLAGS: dict[ArsFlag, frozenset[Flag]] = {
    "is_in_ars": frozenset({Flag.NO, Flag.AWAIT}),
    "erda_sync": frozenset({Flag.AWAIT}),
    "update_metadata": frozenset({Flag.YES}),
    "has_open_share": frozenset({Flag.YES, Flag.AWAIT}),
}


def on_cluster(cluster: str) -> str:
    """An asset with a job starting, queued or running on `cluster`."""
    return f"on:{cluster}"


def flag_tag(flag: ArsFlag, value: Flag | str) -> str:
    """`flag` holds `value`; raises ValueError for a flag value that is not tagged."""
    tagged = TAGGED_FLAGS.get(flag)
    if tagged is None or Flag(value) not in tagged:
        raise ValueError(f"{flag}={value} is not a queue (tagged: {sorted(TAGGED_FLAGS)})")
    return f"{flag}={Flag(value)}"


def agent_cleanup_tag(cluster: str) -> str:
    """A settled asset whose files on pull cluster `cluster` its agent has yet to remove."""
    return f"cleanup:{cluster}"


def status_tag(status: str) -> str:
    """An asset whose overall status (`jobs_status`) is `status`."""
    return f"status:{status}"


def at_job(job: str) -> str:
    """An asset that is at `job` in its pipeline (see `pipeline.current_jobs`)."""
    return f"at:{job}"


def queue_tags(
    track: Track,
    *,
    in_flight: bool,
    active_clusters: Iterable[str],
    status: str | None = None,
    at: Iterable[str] = (),
) -> list[str]:
    """The tags of `track`, given its freshly derived `in_flight`, `active_clusters`, overall
    `status` and current jobs (`at`)."""
    tags = [IN_FLIGHT] if in_flight else []
    tags += [on_cluster(c) for c in active_clusters]
    if track.available_for_services is Flag.PAUSED:
        tags.append(PAUSED)
    for flag, values in TAGGED_FLAGS.items():
        value = getattr(track, flag)
        if value in values:
            tags.append(f"{flag}={value}")
    if track.ars_error:
        tags.append(ARS_ERROR)
    if status in ("DONE", "ERROR") and track.temporary_files_local is Flag.YES:
        tags.append(HOLDS_FILES)
    tags += [agent_cleanup_tag(c.cluster) for c in track.agent_cleanup]
    if status is not None:
        tags.append(status_tag(status))
    tags += [at_job(job) for job in at]
    return tags


@dataclass(frozen=True)
class FlagQuery:
    """Assets whose `flag` holds one of `values`, and each field of `also` one of its values:
    what one ARS sync step works on. The store turns it into an indexed query (the `queues`
    tags, or `has_new_file`'s own index); `matches` asks the same of one document."""

    flag: ArsFlag
    values: tuple[Flag, ...]
    also: Mapping[QueueField, tuple[Flag, ...]] = field(default_factory=dict)

    def matches(self, track: Track) -> bool:
        return getattr(track, self.flag) in self.values and all(
            getattr(track, name) in values for name, values in self.also.items()
        )
