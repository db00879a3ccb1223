"""Callbacks that missed their deadline, saved in the work folder for `dassco-hpc replay`.

`$DASSCO_WORKDIR/.undelivered.jsonl` holds one JSON object per line: `method`, `url` (the
listener's base URL), `path`, `body`, `saved_at`, `error`. Never the token: replay uses the
token it is given. Lines of every job of the asset may share the file (the work folder is per
asset), so writers and the replayer take an exclusive `flock` on it; the replayer replaces the
file atomically, and a writer that locked a file which has since been replaced writes again to
the new one.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dassco_hpc import exitcodes
from dassco_hpc.client import CallbackClient
from dassco_hpc.errors import CallbackRejected, CallbackUndelivered
from dassco_hpc.log import Logger, stderr_log, utc_timestamp

FILENAME = ".undelivered.jsonl"
#: Lines the listener refused for good (404, 422, ...): kept for a person to look at.
REJECTED_FILENAME = ".rejected.jsonl"


@contextmanager
def _locked(path: Path, flags: int) -> Iterator[int]:
    """Open `path` (created if missing) and hold an exclusive lock on the file that is at
    `path` now, not on one that was replaced while we waited for the lock."""
    while True:
        fd = os.open(path, flags | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            opened = os.fstat(fd)
            try:
                current = path.stat()
                same = (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino)
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def append_lines(path: Path, lines: list[str]) -> None:
    if not lines:
        return
    with _locked(path, os.O_WRONLY | os.O_APPEND) as fd:
        _write_all(fd, "".join(f"{line}\n" for line in lines).encode())
        os.fsync(fd)


def _read_lines(fd: int) -> list[str]:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return [
        line for line in b"".join(chunks).decode("utf-8", "replace").splitlines() if line.strip()
    ]


def save(workdir: Path, exc: CallbackUndelivered, *, base_url: str) -> Path:
    """Append the undelivered call to the work folder's replay file; returns its path."""
    record = {
        "method": exc.method,
        "url": base_url,
        "path": exc.path,
        "body": exc.body,
        "saved_at": utc_timestamp(),
        "error": exc.last_error,
    }
    path = workdir / FILENAME
    append_lines(path, [json.dumps(record, separators=(",", ":"))])
    return path


@dataclass
class ReplayReport:
    delivered: int = 0
    #: Left in the file: the listener was unreachable, or refused this token.
    kept: int = 0
    #: Moved to the rejected file.
    rejected: int = 0
    exit_code: int = exitcodes.OK


def _send(client: CallbackClient, record: Any, base_url: str | None) -> None:
    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
        raise ValueError("not a saved callback (no path)")
    url = base_url or record.get("url")
    if not isinstance(url, str) or not url:
        raise ValueError("no listener URL: give --url or set DASSCO_CALLBACK_URL")
    method = str(record.get("method") or "POST")
    client.with_base_url(url).request(method, record["path"], record.get("body"))


def replay(
    workdir: Path,
    client: CallbackClient,
    *,
    base_url: str | None = None,
    log: Logger = stderr_log,
) -> ReplayReport:
    """Send the saved callbacks in order; remove the acknowledged ones from the file.

    `base_url` overrides the URL saved with each line. A line refused for good (404, 422,
    malformed) moves to the rejected file; a line whose token was refused (401/403) stays,
    as another job's token may deliver it; the first line that cannot be delivered before the
    client's deadline stops the replay, keeping it and every line after it.
    """
    report = ReplayReport()
    path = workdir / FILENAME
    if not path.exists():
        log(f"nothing to replay: no {path}")
        return report
    with _locked(path, os.O_RDONLY) as fd:
        lines = _read_lines(fd)
    done: list[str] = []
    rejected: list[str] = []
    auth_refused = unreachable = False
    for index, line in enumerate(lines):
        try:
            _send(client, json.loads(line), base_url)
        except CallbackUndelivered as exc:
            log(f"replay stopped: {exc}")
            unreachable = True
            report.kept += len(lines) - index
            break
        except CallbackRejected as exc:
            if exc.auth:
                log(f"kept: {exc}")
                auth_refused = True
                report.kept += 1
                continue
            log(f"rejected, moved to {REJECTED_FILENAME}: {exc}")
            rejected.append(_rejection(line, str(exc)))
            done.append(line)
            continue
        except ValueError as exc:
            log(f"rejected, moved to {REJECTED_FILENAME}: line {index + 1}: {exc}")
            rejected.append(_rejection(line, str(exc)))
            done.append(line)
            continue
        report.delivered += 1
        done.append(line)
    report.rejected = len(rejected)
    append_lines(workdir / REJECTED_FILENAME, rejected)
    _remove(path, done)
    if report.rejected:
        report.exit_code = exitcodes.UNAVAILABLE
    elif auth_refused:
        report.exit_code = exitcodes.NOPERM
    elif unreachable:
        report.exit_code = exitcodes.TEMPFAIL
    log(
        f"replay of {path}: {report.delivered} delivered, {report.kept} kept, "
        f"{report.rejected} rejected"
    )
    return report


def _rejection(line: str, error: str) -> str:
    try:
        record: Any = json.loads(line)
    except ValueError:
        record = {"line": line}
    if not isinstance(record, dict):
        record = {"line": line}
    record["rejected"] = error
    record["rejected_at"] = utc_timestamp()
    return json.dumps(record, separators=(",", ":"))


def _remove(path: Path, done: list[str]) -> None:
    """Rewrite the file without the handled lines, keeping lines appended meanwhile."""
    if not done:
        return
    with _locked(path, os.O_RDONLY) as fd:
        handled = Counter(done)
        remaining = []
        for line in _read_lines(fd):
            if handled[line] > 0:
                handled[line] -= 1
            else:
                remaining.append(line)
        if not remaining:
            path.unlink()
            return
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(tmp_fd, "".join(f"{line}\n" for line in remaining).encode())
            os.fsync(tmp_fd)
        finally:
            os.close(tmp_fd)
        tmp.replace(path)
