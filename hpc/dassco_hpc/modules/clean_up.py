"""HERB0001 `clean_up`: remove the asset's files from the cluster (its work folder's contents).

Safety before tidiness: only what is *inside* the work folder goes; symbolic links are
removed, never followed (a link to a shared disk must not take the shared files with it);
and the folder itself must be a real, non-trivial directory (not `/`, not the home folder,
not a link), because a mistake here deletes someone else's data. The undelivered-callback
files (`.undelivered.jsonl`, `.rejected.jsonl`) are kept: they hold results the daemon has
not yet received. The folder itself stays (it is the job's current directory).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from dassco_hpc.context import JobContext
from dassco_hpc.errors import ModuleFailed
from dassco_hpc.undelivered import FILENAME, REJECTED_FILENAME

KEEP = frozenset({FILENAME, REJECTED_FILENAME})


def check_workdir(workdir: Path) -> Path:
    """The work folder, resolved, if it is safe to empty; else a non-retryable failure."""
    if workdir.is_symlink():
        raise ModuleFailed(f"work folder {workdir} is a symbolic link: not emptied", False)
    resolved = workdir.resolve()
    if not resolved.is_dir():
        raise ModuleFailed(f"work folder {workdir} is not a directory", retryable=False)
    forbidden = {Path("/").resolve(), Path.home().resolve()}
    if resolved in forbidden or len(resolved.parts) < 3:
        raise ModuleFailed(
            f"refusing to empty {resolved}: too close to the file-system root or the home "
            "folder to be an asset's work folder",
            retryable=False,
        )
    return resolved


def empty(workdir: Path) -> tuple[int, list[str]]:
    """Remove the folder's contents; return (entries removed, errors)."""
    removed, errors = 0, []
    for entry in sorted(workdir.iterdir()):
        if entry.name in KEEP:
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except OSError as exc:
            errors.append(f"{entry.name}: {exc}")
    return removed, errors


def run(ctx: JobContext) -> dict[str, Any]:
    workdir = check_workdir(ctx.workdir)
    removed, errors = empty(workdir)
    ctx.log(f"removed {removed} entr{'y' if removed == 1 else 'ies'} from {workdir}")
    if errors:
        # Often a file still open on a node, or an NFS hiccup: another attempt can help.
        raise ModuleFailed(f"could not remove: {'; '.join(errors)[:3000]}", retryable=True)
    return {"clean_up": True}
