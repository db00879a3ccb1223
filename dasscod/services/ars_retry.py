"""What an operator's ARS retry writes: each ARS flag left in ERROR goes back to the value at
which the ARS sync step that failed picks the asset up again (the steps are described in
`dasscod/supervisors/ars_sync.py`).

A flag in ERROR means ARS refused a call for this asset (or its ERDA sync failed for good) and
the sync gave the asset up; nothing sets it back by itself. Once the operator has fixed what
ARS objected to, the reset below puts the asset back in the step's queue; the sync supervisor
is told of the write like of any other and takes it up at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

from dasscod.model import Flag, Track
from dasscod.queues import ArsFlag

#: Every ARS flag, in the order the sync's steps meet them.
ARS_FLAGS: tuple[ArsFlag, ...] = get_args(ArsFlag)

#: The value each flag is reset to from ERROR, and why that value.
RESET_TO: dict[ArsFlag, Flag] = {
    # create: AWAIT, not NO, so the sync first asks ARS whether the asset exists (a create
    # whose answer went wrong may have got through) and creates it only if it does not: an
    # asset is never created twice, so no second share is ever opened.
    "is_in_ars": Flag.AWAIT,
    # reopen: the asset has no open share (created without one, or a reopen was refused).
    "has_open_share": Flag.NO,
    # upload: the files not yet in ERDA are uploaded again.
    "has_new_file": Flag.YES,
    # synchronise: the ERDA sync is requested again, its failure counts start from zero.
    "erda_sync": Flag.NO,
    # metadata: the whole metadata document is pushed again.
    "update_metadata": Flag.YES,
}


@dataclass(frozen=True)
class ArsReset:
    """The guarded write of one ARS retry: `fields` written only while `expect` holds."""

    flags: list[ArsFlag]
    fields: dict[str, Any]
    expect: dict[str, Any]


def flags_in_error(track: Track) -> list[ArsFlag]:
    return [flag for flag in ARS_FLAGS if getattr(track, flag) is Flag.ERROR]


def plan_reset(track: Track, flags: list[ArsFlag]) -> ArsReset:
    """The write that resets `flags` (each of them in ERROR in `track`)."""
    fields: dict[str, Any] = {flag: RESET_TO[flag] for flag in flags}
    expect: dict[str, Any] = {flag: Flag.ERROR for flag in flags}
    if "erda_sync" in flags:
        fields.update(erda_failures=0, erda_timeouts=0, erda_sync_since=None)
    if "has_open_share" in flags and track.has_new_file is Flag.NO and _files_not_in_erda(track):
        # A share opened again is for files to go into it: the reopen step looks for assets
        # with a new file, and one created without a share was never marked as having any.
        fields["has_new_file"] = Flag.YES
        expect["has_new_file"] = Flag.NO
    if set(flags_in_error(track)) <= set(flags):
        # Nothing of ARS's refusal is left in ERROR: the message goes (it is in the history).
        fields["ars_error"] = None
    fields["ars_not_before"] = None  # retried now, not after an old backoff
    return ArsReset(flags=list(flags), fields=fields, expect=expect)


def _files_not_in_erda(track: Track) -> bool:
    return any(not f.deleted and f.erda_sync is Flag.NO for f in track.file_list)
