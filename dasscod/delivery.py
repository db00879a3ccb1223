"""Delivery folders: how the digitisation side hands new assets to the daemon.

Delivery format
===============

The intake folder (`intake.folder` in the settings) holds one sub-folder per asset::

    <intake folder>/
        <any name>/              one asset; the name is free (e.g. the asset guid)
            <any name>.json      its metadata: exactly one *.json file
            <image files>        one or more, e.g. <asset_guid>.tif
            .ready               optional, empty: "this delivery is complete"

Metadata file
    A JSON object with the fields of the metadata document (the `Metadata` model; field names
    as in the current system's N-drive JSON). Required: `asset_guid` (letters, digits, `.`, `_`,
    `-`), `institution`, `collection`, `pipeline_name`, `workstation_name` and
    `date_asset_taken` (ISO 8601, with its UTC offset). `pipeline_name` must name one of the
    daemon's pipelines. `parent_guid: ""` means "no parent", as the Ingestion Client writes it.
    An optional `files` list names the image files (a manifest): then exactly those files must
    be present. `files` is not stored in the metadata document.

Image files
    Every other regular file in the folder. Its name follows the file-name rule of
    `dasscod.filenames` (ASCII letters, digits, `.`, `_`, `-`; at most 200 characters), the
    rule every later step applies too. Its `type` in the track's `file_list` is its
    extension in lower case without the dot (`tif`, `jpeg`); its size is recorded in MB
    (bytes / 1 000 000) and its checksum as CRC-32 (an unsigned integer). Empty files and
    sub-folders are not allowed.

Ignored names
    Names starting with "." (e.g. the temporary files of a copy in progress), except the
    `.ready` marker, and a `REASON.txt` left behind by an earlier quarantine (it must be a
    regular file). Sub-folders of the intake folder whose names start with "." are not looked
    at, nor are empty sub-folders. Nothing in a delivery is opened through a symbolic link or
    waited on (a FIFO is refused, not read).

When a delivery is taken
    At once when `.ready` exists; otherwise when nothing in the folder (names, sizes and
    modification times, dot files included) has changed for `intake.settle_s` seconds. A
    producer should write `.ready` last, or assemble the folder under a name starting with "."
    inside the intake folder and rename it when complete (a rename is atomic): a copy that
    stalls for longer than `settle_s` without either could otherwise be taken incomplete (the
    `files` manifest catches that case).

What happens to it
    A valid delivery is moved to `<work_area>/<asset_guid>/` and its track and metadata
    documents are created. A delivery that cannot be taken (invalid or unreadable JSON,
    metadata failing validation, unknown pipeline, no image files, a listed file missing, an
    asset guid that is already registered) is moved to
    `<quarantine>/<folder name>-<UTC time>/` with a `REASON.txt` that says what is wrong. Fix
    it and move the folder back into the intake folder. (A delivery folder that is a symbolic
    link, or holds a `REASON.txt` that is not a regular file it may replace, goes inside that
    fresh quarantine folder instead, next to the `REASON.txt`: see `dasscod.quarantine`.)

This module reads and checks a delivery folder and tracks whether a folder has settled; it
does no MongoDB I/O. Its functions block on file I/O: call them from a worker thread.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import ValidationError

from dasscod.filenames import file_name_problem
from dasscod.model import FileEntry, Metadata, validation_problems

READY_MARKER = ".ready"
REASON_FILE = "REASON.txt"
#: The metadata key that lists the delivery's image files (optional; not stored).
MANIFEST_KEY = "files"
#: A metadata file larger than this is not read (it is not a metadata file).
MAX_METADATA_BYTES = 10_000_000
CRC_CHUNK = 1 << 20
BYTES_PER_MB = 1_000_000


class DeliveryRejected(Exception):
    """The delivery cannot be taken; `reason` says why, for a person fixing it."""

    def __init__(self, reason: str, *, hint: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        #: What to do about it, when that is not simply "fix it and deliver it again".
        self.hint = hint


@dataclass(frozen=True)
class Delivery:
    """A delivery folder that passed every check that needs no database."""

    folder: Path
    metadata_file: Path
    metadata: Metadata
    #: (path, file entry) per image file, sorted by name.
    files: list[tuple[Path, FileEntry]]
    #: Total size of the image files in MB.
    asset_size: float

    @property
    def guid(self) -> str:
        return self.metadata.asset_guid

    @property
    def file_entries(self) -> list[FileEntry]:
        return [entry for _, entry in self.files]


_RENAME_HINT = (
    "Rename the file (ASCII letters, digits, '.', '_' and '-', starting with a letter or a "
    "digit), update a `files` list if the metadata has one, and move the folder back into the "
    "intake folder."
)


def read_delivery(folder: Path, pipelines: Collection[str]) -> Delivery:
    """Read and check the delivery in `folder`; raise `DeliveryRejected` with a readable reason.

    `pipelines` holds the names of the pipelines the daemon knows.
    """
    try:
        if stat.S_ISLNK(folder.lstat().st_mode):
            raise DeliveryRejected("the delivery folder is a symbolic link, not a folder")
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DeliveryRejected(f"the folder cannot be read: {_os_error(exc)}") from exc
    json_files: list[Path] = []
    image_files: list[Path] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue  # never opened, so whatever they are cannot harm
        path = Path(entry.path)
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except OSError as exc:
            raise DeliveryRejected(f"{entry.name} cannot be read: {_os_error(exc)}") from exc
        if entry.name == REASON_FILE:
            # Left by an earlier quarantine, and overwritten by the next one: only a regular
            # file may stand there (a link or a FIFO here was once a way to harm the host).
            if not stat.S_ISREG(mode):
                raise DeliveryRejected(f"{REASON_FILE} is not a regular file")
            continue
        if stat.S_ISDIR(mode):
            raise DeliveryRejected(
                f"{entry.name} is a sub-folder; a delivery holds only its metadata file and "
                "its image files"
            )
        if not stat.S_ISREG(mode):
            raise DeliveryRejected(f"{entry.name} is not a regular file (e.g. a symbolic link)")
        if path.suffix.lower() == ".json":
            json_files.append(path)
        elif problem := file_name_problem(entry.name):  # the rule `load` applies on the cluster
            raise DeliveryRejected(f"image {problem}", hint=_RENAME_HINT)
        else:
            image_files.append(path)

    if not json_files:
        raise DeliveryRejected("no metadata file: the folder must hold exactly one *.json file")
    if len(json_files) > 1:
        names = ", ".join(p.name for p in json_files)
        raise DeliveryRejected(
            f"more than one metadata file ({names}): the folder must hold exactly one *.json file"
        )
    metadata_file = json_files[0]
    data = _read_json(metadata_file)
    manifest = _manifest(data, metadata_file.name)
    metadata = _validate_metadata(data, metadata_file.name)
    if metadata.pipeline_name not in pipelines:
        known = ", ".join(sorted(pipelines)) or "none"
        raise DeliveryRejected(
            f"unknown pipeline {metadata.pipeline_name!r} in {metadata_file.name} "
            f"(pipeline_name must be one of: {known})"
        )

    if not image_files:
        raise DeliveryRejected("no image files: the folder holds only the metadata file")
    if manifest is not None:
        present = {p.name for p in image_files}
        missing = [name for name in manifest if name not in present]
        if missing:
            raise DeliveryRejected(
                f"files listed in {metadata_file.name} are missing: {', '.join(missing)}"
            )
        unlisted = sorted(present - set(manifest))
        if unlisted:
            raise DeliveryRejected(
                f"files not listed in {metadata_file.name} ({MANIFEST_KEY}): {', '.join(unlisted)}"
            )

    files: list[tuple[Path, FileEntry]] = []
    total_bytes = 0
    for path in image_files:
        size = _size(path)
        files.append((path, file_entry(path, size)))
        total_bytes += size
    return Delivery(
        folder=folder,
        metadata_file=metadata_file,
        metadata=metadata,
        files=files,
        asset_size=total_bytes / BYTES_PER_MB,
    )


def file_entry(path: Path, size: int | None = None) -> FileEntry:
    """The `file_list` entry of one image file: name, type, size in MB and CRC-32."""
    if size is None:
        size = _size(path)
    if size == 0:
        raise DeliveryRejected(f"{path.name} is empty (0 bytes)")
    return FileEntry(
        name=path.name,
        type=path.suffix.lower().removeprefix("."),
        file_size=size / BYTES_PER_MB,
        check_sum=crc32_of(path),
    )


def open_regular(path: Path) -> BinaryIO:
    """Open a delivery's file for reading, refusing what is not a regular file: a link is not
    followed and a FIFO does not block (it may have replaced the file since it was listed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DeliveryRejected(f"{path.name} is not a regular file (a symbolic link)") from exc
        raise DeliveryRejected(f"{path.name} cannot be read: {_os_error(exc)}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DeliveryRejected(f"{path.name} is not a regular file")
    return os.fdopen(fd, "rb")


def crc32_of(path: Path) -> int:
    """CRC-32 of a file, read in chunks (image files can be large)."""
    crc = 0
    try:
        with open_regular(path) as stream:
            while chunk := stream.read(CRC_CHUNK):
                crc = zlib.crc32(chunk, crc)
    except OSError as exc:
        raise DeliveryRejected(f"{path.name} cannot be read: {_os_error(exc)}") from exc
    return crc


def _size(path: Path) -> int:
    try:
        info = path.lstat()
    except OSError as exc:
        raise DeliveryRejected(f"{path.name} cannot be read: {_os_error(exc)}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise DeliveryRejected(f"{path.name} is not a regular file")
    return info.st_size


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open_regular(path) as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > MAX_METADATA_BYTES:
                raise DeliveryRejected(
                    f"{path.name} is {size} bytes, too large for a metadata file "
                    f"(at most {MAX_METADATA_BYTES})"
                )
            raw = stream.read(MAX_METADATA_BYTES + 1)
    except OSError as exc:
        raise DeliveryRejected(f"{path.name} cannot be read: {_os_error(exc)}") from exc
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DeliveryRejected(
            f"{path.name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except ValueError as exc:  # not decodable as UTF-8/16/32
        raise DeliveryRejected(f"{path.name} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DeliveryRejected(f"{path.name} must hold a JSON object, not {type(data).__name__}")
    return data


def _manifest(data: dict[str, Any], source: str) -> list[str] | None:
    """Remove and check the optional `files` list."""
    if MANIFEST_KEY not in data:
        return None
    value = data.pop(MANIFEST_KEY)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise DeliveryRejected(
            f"{source}: {MANIFEST_KEY} must be a list of file names, got {value!r}"[:500]
        )
    if not value:
        return None
    return list(dict.fromkeys(value))


def _validate_metadata(data: dict[str, Any], source: str) -> Metadata:
    if data.get("parent_guid") == "":
        data["parent_guid"] = None  # the Ingestion Client writes "" for "no parent"
    try:
        return Metadata.model_validate(data)
    except ValidationError as exc:
        raise DeliveryRejected(
            f"the metadata in {source} is not valid: {validation_problems(exc)}"
        ) from exc


def _os_error(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


# --------------------------------------------------------------------------- settling

#: (relative path, is a folder, size, modification time in ns) of everything in a folder.
Snapshot = tuple[tuple[str, bool, int, int], ...]


def snapshot(folder: Path) -> Snapshot | None:
    """Everything in `folder` (recursively, dot files included) as comparable data; None when
    the folder cannot be read completely (e.g. a file vanished while it was listed)."""
    found: list[tuple[str, bool, int, int]] = []
    pending = [(folder, "")]
    try:
        while pending:
            current, prefix = pending.pop()
            with os.scandir(current) as listing:
                for entry in listing:
                    info = entry.stat(follow_symlinks=False)
                    is_dir = stat.S_ISDIR(info.st_mode)
                    name = prefix + entry.name
                    found.append((name, is_dir, info.st_size, info.st_mtime_ns))
                    if is_dir:
                        pending.append((Path(entry.path), name + "/"))
    except OSError:
        return None
    return tuple(sorted(found))


@dataclass
class SettleTracker:
    """Whether a folder has stayed unchanged for `settle_s` seconds, from snapshots taken on
    successive scans (no sleeping: the scan loop supplies the time)."""

    settle_s: float
    _seen: dict[str, tuple[Snapshot, float]] = field(default_factory=dict)

    def settled(self, key: str, current: Snapshot | None, now: float) -> bool:
        if current is None:
            self._seen.pop(key, None)
            return False
        previous = self._seen.get(key)
        if previous is None or previous[0] != current:
            self._seen[key] = (current, now)
            return self.settle_s <= 0
        return now - previous[1] >= self.settle_s

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)

    def retain(self, keys: Iterable[str]) -> None:
        """Drop the state of folders that are gone."""
        keep = set(keys)
        for key in [k for k in self._seen if k not in keep]:
            del self._seen[key]
