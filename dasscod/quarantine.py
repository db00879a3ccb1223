"""Moving a delivery that cannot be taken out of the intake folder, safely.

A delivery is written by someone else, so nothing in it is trusted: a `REASON.txt` already in
it may be a symbolic link to a file of the daemon's user or a FIFO that blocks whoever opens
it, and the delivery folder itself may be a link. So:

- the reason is written with `O_CREAT|O_EXCL|O_NOFOLLOW|O_NONBLOCK`, relative to a descriptor
  of the delivery folder opened with `O_NOFOLLOW` (the folder cannot be swapped for a link
  between the check and the write); whatever stood at `REASON.txt` is unlinked first (unlink
  never follows a link);
- a delivery that cannot hold the reason (a symbolic link, or one with a `REASON.txt` folder)
  is moved, as it is, into a fresh folder that the daemon just created, next to the reason;
- the quarantine name `<name>-<UTC time>[-n]` is shortened to fit NAME_MAX, keeping a hash of
  the full name so two long names stay apart.

The reason is written before the move: a crash in between leaves the delivery in the intake
folder, to be rejected again.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from datetime import datetime
from pathlib import Path

from dasscod.delivery import REASON_FILE

#: Bytes in one file name on Linux file systems (NAME_MAX).
NAME_MAX = 255
#: A new file only: never through a link, never blocking on a FIFO.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def move_to_quarantine(path: Path, quarantine: Path, reason_text: str, at: datetime) -> Path:
    """Move `path` (a delivery folder, or whatever stands at a delivery's name) into the
    quarantine folder with a REASON.txt; return where it went. Raises OSError when it cannot
    be moved (it is then left where it was)."""
    quarantine.mkdir(parents=True, exist_ok=True)
    stamp = at.strftime("%Y%m%dT%H%M%SZ")
    info = path.lstat()
    if stat.S_ISDIR(info.st_mode) and _write_reason_inside(path, reason_text):
        return _rename_free(path, quarantine, path.name, stamp)
    # A link, a file, or a folder that cannot hold the reason: a fresh folder of our own.
    holder = _mkdir_free(quarantine, path.name, stamp)
    _write_reason(holder, reason_text)
    path.rename(holder / path.name)
    return holder


def quarantine_name(name: str, stamp: str, n: int = 1) -> str:
    """`<name>-<stamp>` (`-<n>` from the second), shortened to fit NAME_MAX."""
    suffix = f"-{stamp}" + (f"-{n}" if n > 1 else "")
    return _fit(name, suffix)


def _fit(name: str, suffix: str) -> str:
    full = os.fsencode(name) + suffix.encode()
    if len(full) <= NAME_MAX:
        return name + suffix
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    room = NAME_MAX - len(suffix.encode()) - len(digest) - 1
    head = os.fsencode(name)[:room]
    # Cut on a character boundary where the name is UTF-8, so the shortened name stays readable.
    text = head.decode("utf-8", errors="ignore") if _is_utf8(os.fsencode(name)) else None
    shortened = text if text is not None else os.fsdecode(head)
    return f"{shortened}~{digest}{suffix}"


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _write_reason_inside(folder: Path, text: str) -> bool:
    """Write REASON.txt in `folder`; False when the folder cannot hold it (it became a link,
    or REASON.txt is a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return False
        raise
    try:
        try:
            os.unlink(REASON_FILE, dir_fd=fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            return False
        try:
            _write_reason_at(fd, text)
        except FileExistsError:
            return False  # recreated by the producer between unlink and open: do not fight
        return True
    finally:
        os.close(fd)


def _write_reason(folder: Path, text: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _write_reason_at(fd, text)
    finally:
        os.close(fd)


def _write_reason_at(dir_fd: int, text: str) -> None:
    out = os.open(REASON_FILE, _CREATE, 0o644, dir_fd=dir_fd)
    # A name that is not UTF-8 (surrogate escapes) is written with its bytes escaped.
    with os.fdopen(out, "w", encoding="utf-8", errors="backslashreplace") as stream:
        stream.write(text)


def _rename_free(path: Path, quarantine: Path, name: str, stamp: str) -> Path:
    n = 1
    while True:
        dest = quarantine / quarantine_name(name, stamp, n)
        if not os.path.lexists(dest):
            path.rename(dest)
            return dest
        n += 1


def _mkdir_free(quarantine: Path, name: str, stamp: str) -> Path:
    n = 1
    while True:
        dest = quarantine / quarantine_name(name, stamp, n)
        try:
            dest.mkdir(mode=0o755)
        except FileExistsError:
            n += 1
            continue
        return dest
