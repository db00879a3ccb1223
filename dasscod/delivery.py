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
    A JSON object in UTF-8 (a byte-order mark is tolerated) of at most MAX_METADATA_BYTES,
    with the fields of the metadata document (the `Metadata` model; field names as in the
    current system's N-drive JSON). Required: `asset_guid` (letters, digits, `.`, `_`, `-`),
    `institution`, `collection`, `pipeline_name`, `workstation_name` and `date_asset_taken`
    (ISO 8601, with its UTC offset). `pipeline_name` must name one of the daemon's pipelines.
    `parent_guid: ""` means "no parent", as the Ingestion Client writes it; any other
    `parent_guid` follows the guid rule. An optional `files` list names the image files (a
    manifest): then exactly those files must be present. `files` is not stored in the
    metadata document. Refused, because a store or a reader could take them otherwise than
    meant: a key given twice, `NaN`/`Infinity` or a number too large for a float, integers
    beyond 64 bits, field names that are empty, start with `$` or hold `.` or NUL, NUL in any
    text (ARS's database cannot store it), nesting deeper than `bounds.MAX_DEPTH`, text the
    store cannot encode (lone surrogates), names (NAME_FIELDS) longer than MAX_NAME_LENGTH,
    and the fields the daemon owns (`_id`, `metadata_version`).

Image files
    Every other regular file in the folder, at most MAX_FILES of them and `intake.max_delivery_mb`
    in all. Its name follows the file-name rule of `dasscod.filenames` (ASCII letters, digits,
    `.`, `_`, `-`; at most 200 characters), the rule every later step applies too; two names
    that differ only in case are refused (a case-insensitive file system on the way to ERDA
    would merge them). Its `type` in the track's `file_list` is its extension in lower case
    without the dot (`tif`, `jpeg`); its size is recorded in MB (bytes / 1 000 000) and its
    checksum as CRC-32 (an unsigned integer). Empty files, sub-folders and files with more
    than one name (hard links: the other name could change them after they were checked) are
    not allowed.

Ignored names
    Regular files whose names start with "." (e.g. the temporary files of a copy in progress,
    `.DS_Store`): they move with the delivery but are not part of the asset. Anything else
    starting with "." (a folder, a link, a FIFO) is refused. A `REASON.txt` left behind by an
    earlier quarantine is ignored (it must be a regular file). Sub-folders of the intake folder
    whose names start with "." are not looked at, nor are empty sub-folders. Nothing in a
    delivery is opened through a symbolic link or waited on (a FIFO is refused, not read). A
    folder with more than MAX_ENTRIES entries is refused without reading further.

When a delivery is taken
    At once when `.ready` exists; otherwise when nothing in the folder (names, sizes and
    modification times, dot files included) has changed for `intake.settle_s` seconds. A
    producer should write `.ready` last, or assemble the folder under a name starting with "."
    inside the intake folder and rename it when complete (a rename is atomic): a copy that
    stalls for longer than `settle_s` without either could otherwise be taken incomplete (the
    `files` manifest catches that case). A file that changes while it is read (its size,
    times or identity differ before and after) makes the delivery wait until it has settled,
    `.ready` or not; one that changes after it was read and before it was registered sends
    the delivery to quarantine: what is checksummed is what is moved.

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

import codecs
import errno
import json
import math
import os
import re
import stat
import zlib
from collections.abc import Callable, Collection, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import bson
from pydantic import ValidationError

from dasscod.bounds import check_document
from dasscod.filenames import file_name_problem
from dasscod.model import GUID_PATTERN, FileEntry, Metadata, validation_problems
from dasscod.store.codec import to_bson

READY_MARKER = ".ready"
REASON_FILE = "REASON.txt"
#: The metadata key that lists the delivery's image files (optional; not stored).
MANIFEST_KEY = "files"
#: A metadata file larger than this is not read (it is not a metadata file: the ingestion
#: client's are a few KB). Also the largest `metadata` part the intake API takes.
MAX_METADATA_BYTES = 1_000_000
#: Image files in one delivery (an asset has a handful; the track keeps one entry each).
MAX_FILES = 200
#: Entries of any kind in one delivery folder, sub-folders included: listing stops here.
MAX_ENTRIES = 1000
#: Default of `intake.max_delivery_mb`, in bytes: every image file of one delivery together.
DEFAULT_MAX_BYTES = 10_000 * 1_000_000
#: Metadata fields that name something (the workstation also names the batch and the MOS
#: label key), and how long they may be.
NAME_FIELDS = ("institution", "collection", "pipeline_name", "workstation_name", "digitiser")
MAX_NAME_LENGTH = 200
#: Metadata fields the daemon writes itself; a delivery may not set them.
OWNED_FIELDS = frozenset({"_id", "metadata_version"})
CRC_CHUNK = 1 << 20
BYTES_PER_MB = 1_000_000


class DeliveryRejected(Exception):
    """The delivery cannot be taken; `reason` says why, for a person fixing it."""

    def __init__(self, reason: str, *, hint: str | None = None) -> None:
        # A name that is not UTF-8 may be part of it: escaped, it can be written anywhere.
        reason = _shown(reason)
        super().__init__(reason)
        self.reason = reason
        #: What to do about it, when that is not simply "fix it and deliver it again".
        self.hint = None if hint is None else _shown(hint)


class DeliveryChanged(DeliveryRejected):
    """A file changed while it was read: the delivery is still being written (or was
    tampered with). Before the move it waits until it settles; after, it is quarantined."""


class FileStamp(NamedTuple):
    """What identifies one version of a file: the same stamp later means the same bytes
    (a write changes mtime or ctime; a replacement changes the inode)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileStamp:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


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
    #: The stamp of each file read (metadata and images) by name, as it was read.
    stamps: dict[str, FileStamp] = field(default_factory=dict)

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
_CHANGED_HINT = (
    "Nothing may write to a delivery once it is complete (after `.ready`, or once it settled): "
    "make sure every copy into it has finished, then move the folder back into the intake "
    "folder."
)


def read_delivery(
    folder: Path,
    pipelines: Collection[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: Callable[[], None] | None = None,
) -> Delivery:
    """Read and check the delivery in `folder`; raise `DeliveryRejected` with a readable reason
    (`DeliveryChanged` when a file changed while it was read).

    `pipelines` holds the names of the pipelines the daemon knows; `max_bytes` bounds the
    image files together (checked from their sizes before any is read); `progress` is called
    after every chunk read (the intake's watchdog beat: a large delivery is progress, a hung
    read is not).
    """
    json_files: list[tuple[Path, os.stat_result]] = []
    image_files: list[tuple[Path, os.stat_result]] = []
    for entry, info in _entries(folder):
        mode = info.st_mode
        if entry.name.startswith("."):
            if not stat.S_ISREG(mode):
                raise DeliveryRejected(
                    f"{_shown(entry.name)} is not a regular file (a folder, link or FIFO "
                    "whose name starts with '.'); a delivery holds only regular files"
                )
            continue  # never opened, so whatever they hold cannot harm
        if entry.name == REASON_FILE:
            # Left by an earlier quarantine, and overwritten by the next one: only a regular
            # file may stand there (a link or a FIFO here was once a way to harm the host).
            if not stat.S_ISREG(mode):
                raise DeliveryRejected(f"{REASON_FILE} is not a regular file")
            continue
        if stat.S_ISDIR(mode):
            raise DeliveryRejected(
                f"{_shown(entry.name)} is a sub-folder; a delivery holds only its metadata "
                "file and its image files"
            )
        if not stat.S_ISREG(mode):
            raise DeliveryRejected(
                f"{_shown(entry.name)} is not a regular file (e.g. a symbolic link)"
            )
        if info.st_nlink > 1:
            raise DeliveryRejected(
                f"{_shown(entry.name)} has {info.st_nlink} names (hard links): through another "
                "name it could change after it was checked",
                hint="Deliver a copy of the file, not a hard link, and move the folder back "
                "into the intake folder.",
            )
        path = Path(entry.path)
        if path.suffix.lower() == ".json":
            json_files.append((path, info))
        elif problem := file_name_problem(entry.name):  # the rule `load` applies on the cluster
            raise DeliveryRejected(f"image {problem}", hint=_RENAME_HINT)
        else:
            image_files.append((path, info))

    if not json_files:
        raise DeliveryRejected("no metadata file: the folder must hold exactly one *.json file")
    if len(json_files) > 1:
        names = ", ".join(_shown(p.name) for p, _ in json_files)
        raise DeliveryRejected(
            f"more than one metadata file ({names}): the folder must hold exactly one *.json file"
        )
    metadata_file, metadata_info = json_files[0]
    source = _shown(metadata_file.name)
    data = _read_json(metadata_file, FileStamp.of(metadata_info), source)
    manifest = _manifest(data, source)
    metadata = _validate_metadata(data, source)
    if metadata.pipeline_name not in pipelines:
        known = ", ".join(sorted(pipelines)) or "none"
        raise DeliveryRejected(
            f"unknown pipeline {metadata.pipeline_name!r} in {source} "
            f"(pipeline_name must be one of: {known})"
        )

    if not image_files:
        raise DeliveryRejected("no image files: the folder holds only the metadata file")
    if len(image_files) > MAX_FILES:
        raise DeliveryRejected(
            f"{len(image_files)} image files: a delivery holds at most {MAX_FILES}"
        )
    _no_case_twins([p.name for p, _ in image_files])
    if manifest is not None:
        present = {p.name for p, _ in image_files}
        missing = [name for name in manifest if name not in present]
        if missing:
            raise DeliveryRejected(
                f"files listed in {source} are missing: {', '.join(missing)}"[:2000]
            )
        unlisted = sorted(present - set(manifest))
        if unlisted:
            raise DeliveryRejected(
                f"files not listed in {source} ({MANIFEST_KEY}): {', '.join(unlisted)}"[:2000]
            )

    total_bytes = sum(info.st_size for _, info in image_files)
    if total_bytes > max_bytes:
        raise DeliveryRejected(
            f"the image files hold {total_bytes} bytes in all, more than intake takes in one "
            f"delivery ({max_bytes}: intake.max_delivery_mb)",
            hint="Split the asset's files, or ask the operators to raise "
            "intake.max_delivery_mb if assets this large are expected.",
        )
    stamps = {metadata_file.name: FileStamp.of(metadata_info)}
    files: list[tuple[Path, FileEntry]] = []
    for path, info in image_files:
        stamp = FileStamp.of(info)
        if stamp.size == 0:
            raise DeliveryRejected(f"{path.name} is empty (0 bytes)")
        crc = _stable_crc(path, stamp, progress)
        stamps[path.name] = stamp
        files.append((path, _entry(path, stamp.size, crc)))
    return Delivery(
        folder=folder,
        metadata_file=metadata_file,
        metadata=metadata,
        files=files,
        asset_size=total_bytes / BYTES_PER_MB,
        stamps=stamps,
    )


def verify_unchanged(delivery: Delivery, folder: Path) -> None:
    """Check that `folder` (the delivery after its move) holds exactly the files that were
    read, unchanged; raise `DeliveryChanged` naming what differs."""
    seen: set[str] = set()
    for entry, info in _entries(folder):
        name = entry.name
        if name.startswith(".") and stat.S_ISREG(info.st_mode):
            continue
        stamp = delivery.stamps.get(name)
        if stamp is None:
            raise DeliveryChanged(f"{_shown(name)} appeared while the delivery was taken",
                                  hint=_CHANGED_HINT)
        if FileStamp.of(info) != stamp:
            raise DeliveryChanged(
                f"{_shown(name)} changed (was written to or replaced) while the delivery was "
                "taken", hint=_CHANGED_HINT)
        seen.add(name)
    gone = sorted(set(delivery.stamps) - seen)
    if gone:
        raise DeliveryChanged(f"{', '.join(map(_shown, gone))} vanished while the delivery was "
                              "taken", hint=_CHANGED_HINT)


def file_entry(path: Path, size: int | None = None) -> FileEntry:
    """The `file_list` entry of one image file: name, type, size in MB and CRC-32."""
    if size is None:
        size = _size(path)
    if size == 0:
        raise DeliveryRejected(f"{path.name} is empty (0 bytes)")
    return _entry(path, size, crc32_of(path))


def _entry(path: Path, size: int, crc: int) -> FileEntry:
    return FileEntry(
        name=path.name,
        type=path.suffix.lower().removeprefix("."),
        file_size=size / BYTES_PER_MB,
        check_sum=crc,
    )


def open_regular(path: Path) -> BinaryIO:
    """Open a delivery's file for reading, refusing what is not a regular file: a link is not
    followed and a FIFO does not block (it may have replaced the file since it was listed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DeliveryRejected(
                f"{_shown(path.name)} is not a regular file (a symbolic link)") from exc
        raise DeliveryRejected(f"{_shown(path.name)} cannot be read: {_os_error(exc)}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DeliveryRejected(f"{_shown(path.name)} is not a regular file")
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


def _stable_crc(path: Path, stamp: FileStamp, progress: Callable[[], None] | None) -> int:
    """CRC-32 of the file `stamp` describes, in chunks; `DeliveryChanged` when the file read is
    not that one, or changed while it was read."""
    crc = 0
    done = 0
    try:
        with open_regular(path) as stream:
            if FileStamp.of(os.fstat(stream.fileno())) != stamp:
                raise _changed_while_read(path)
            while chunk := stream.read(CRC_CHUNK):
                crc = zlib.crc32(chunk, crc)
                done += len(chunk)
                if done > stamp.size:
                    raise _changed_while_read(path)
                if progress is not None:
                    progress()
            if done != stamp.size or FileStamp.of(os.fstat(stream.fileno())) != stamp:
                raise _changed_while_read(path)
    except OSError as exc:
        raise DeliveryRejected(f"{_shown(path.name)} cannot be read: {_os_error(exc)}") from exc
    return crc


def _changed_while_read(path: Path) -> DeliveryChanged:
    return DeliveryChanged(f"{_shown(path.name)} changed while it was read", hint=_CHANGED_HINT)


def _entries(folder: Path) -> list[tuple[os.DirEntry[str], os.stat_result]]:
    """The folder's entries with their own (not followed) status, sorted by name; at most
    MAX_ENTRIES."""
    found: list[tuple[os.DirEntry[str], os.stat_result]] = []
    try:
        if stat.S_ISLNK(folder.lstat().st_mode):
            raise DeliveryRejected("the delivery folder is a symbolic link, not a folder")
        with os.scandir(folder) as listing:
            for entry in listing:
                if len(found) >= MAX_ENTRIES:
                    raise DeliveryRejected(
                        f"the folder holds more than {MAX_ENTRIES} entries; a delivery is one "
                        f"asset, with at most {MAX_FILES} image files"
                    )
                try:
                    found.append((entry, entry.stat(follow_symlinks=False)))
                except OSError as exc:
                    raise DeliveryRejected(
                        f"{_shown(entry.name)} cannot be read: {_os_error(exc)}") from exc
    except OSError as exc:
        raise DeliveryRejected(f"the folder cannot be read: {_os_error(exc)}") from exc
    return sorted(found, key=lambda item: item[0].name)


def _no_case_twins(names: Iterable[str]) -> None:
    seen: dict[str, str] = {}
    for name in sorted(names):
        twin = seen.setdefault(name.lower(), name)
        if twin != name:
            raise DeliveryRejected(
                f"{twin} and {name} differ only in case: on a file system that ignores case "
                "(ERDA's, a Windows share) one would overwrite the other",
                hint=_RENAME_HINT,
            )


def _size(path: Path) -> int:
    try:
        info = path.lstat()
    except OSError as exc:
        raise DeliveryRejected(f"{path.name} cannot be read: {_os_error(exc)}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise DeliveryRejected(f"{path.name} is not a regular file")
    return info.st_size


def _read_json(path: Path, stamp: FileStamp, source: str) -> dict[str, Any]:
    """Read the metadata file `stamp` describes; refused by its size before a byte is read."""
    if stamp.size > MAX_METADATA_BYTES:
        raise DeliveryRejected(
            f"{source} is {stamp.size} bytes, too large for a metadata file "
            f"(at most {MAX_METADATA_BYTES})"
        )
    try:
        with open_regular(path) as stream:
            if FileStamp.of(os.fstat(stream.fileno())) != stamp:
                raise _changed_while_read(path)
            raw = stream.read(MAX_METADATA_BYTES + 1)
            if len(raw) != stamp.size or FileStamp.of(os.fstat(stream.fileno())) != stamp:
                raise _changed_while_read(path)
    except OSError as exc:
        raise DeliveryRejected(f"{source} cannot be read: {_os_error(exc)}") from exc
    return parse_metadata_json(raw, source)


class _Refused(ValueError):
    """Raised from inside the JSON parser's hooks."""


def parse_metadata_json(raw: bytes, source: str) -> dict[str, Any]:
    """The JSON object in `raw` (UTF-8, at most MAX_METADATA_BYTES), refusing what a store or
    another reader could take otherwise than meant (see the module's "Metadata file")."""
    if len(raw) > MAX_METADATA_BYTES:
        raise DeliveryRejected(
            f"{source} is {len(raw)} bytes, too large for a metadata file "
            f"(at most {MAX_METADATA_BYTES})"
        )
    try:
        text = raw.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DeliveryRejected(
            f"{source} is not UTF-8 text (byte {exc.start} cannot be decoded)",
            hint="Save the metadata file as UTF-8 and move the folder back into the intake "
            "folder.",
        ) from None
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant,
                          parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise DeliveryRejected(
            f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise DeliveryRejected(f"{source} is nested too deeply to be metadata") from None
    except ValueError as exc:  # _Refused, or an integer of more than 4300 digits
        raise DeliveryRejected(f"{source} is not acceptable JSON: {exc}"[:1000]) from None
    if not isinstance(data, dict):
        raise DeliveryRejected(f"{source} must hold a JSON object, not {type(data).__name__}")
    try:
        check_document(data, "metadata")
    except ValueError as exc:
        raise DeliveryRejected(f"the metadata in {source} is not acceptable: {exc}") from None
    if nul := _first_nul(data, "metadata"):
        raise DeliveryRejected(
            f"the metadata in {source} holds a NUL character at {nul}: ARS's database cannot "
            "store it; remove it"
        )
    owned = sorted(OWNED_FIELDS & data.keys())
    if owned:
        raise DeliveryRejected(
            f"the metadata in {source} sets {', '.join(owned)}: the daemon writes those fields "
            "itself; remove them"
        )
    return data


def _first_nul(value: Any, path: str) -> str | None:
    """Where the first string value holding NUL is (field names are checked by `bounds`)."""
    if isinstance(value, str):
        return path if "\0" in value else None
    items = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    for key, item in items:
        found = _first_nul(item, f"{path}.{key}" if isinstance(value, dict) else f"{path}[{key}]")
        if found:
            return found
    return None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _Refused(f"the key {key[:100]!r} is given twice in one object (readers "
                           "disagree on which one counts)")
        data[key] = value
    return data


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a number the metadata may hold")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:50]} is too large")
    return value


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
        metadata = Metadata.model_validate(data)
    except ValidationError as exc:
        raise DeliveryRejected(
            f"the metadata in {source} is not valid: {validation_problems(exc)}"[:2000]
        ) from exc
    long = [name for name in NAME_FIELDS if len(getattr(metadata, name)) > MAX_NAME_LENGTH]
    if long:
        raise DeliveryRejected(
            f"the metadata in {source} is not valid: {', '.join(long)} longer than "
            f"{MAX_NAME_LENGTH} characters (a name, not a text)"
        )
    parent = metadata.parent_guid
    if parent is not None and (not re.fullmatch(GUID_PATTERN, parent)
                               or parent == metadata.asset_guid):
        raise DeliveryRejected(
            f"the metadata in {source} is not valid: parent_guid {parent[:100]!r} is not the "
            "guid of another asset (letters, digits and . _ -, at most 200; \"\" for none)"
        )
    try:
        bson.encode(to_bson(metadata.model_dump()))
    except (ValueError, bson.errors.BSONError) as exc:  # lone surrogates, above all
        raise DeliveryRejected(
            f"the metadata in {source} cannot be stored: {exc}"[:1000]) from None
    return metadata


def _shown(name: str) -> str:
    """A file name for a reason or a log line: one that is not valid UTF-8 (the OS hands it
    over with surrogate escapes) is shown with its bytes escaped."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _os_error(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


# --------------------------------------------------------------------------- settling

#: (relative path, is a folder, size, modification time in ns) of everything in a folder.
Snapshot = tuple[tuple[str, bool, int, int], ...]


def snapshot(folder: Path) -> Snapshot | None:
    """Everything in `folder` (recursively, dot files included) as comparable data; None when
    the folder cannot be read completely for now (e.g. a file vanished while it was listed).
    Raises `DeliveryRejected` for what will not pass by itself: more than MAX_ENTRIES entries
    (listing stops there), or an entry that cannot be read (no permission)."""
    found: list[tuple[str, bool, int, int]] = []
    pending = [(folder, "")]
    name = ""
    try:
        while pending:
            current, prefix = pending.pop()
            with os.scandir(current) as listing:
                for entry in listing:
                    if len(found) >= MAX_ENTRIES:
                        raise DeliveryRejected(
                            f"the folder holds more than {MAX_ENTRIES} entries; a delivery is "
                            f"one asset, with at most {MAX_FILES} image files"
                        )
                    name = prefix + entry.name
                    info = entry.stat(follow_symlinks=False)
                    is_dir = stat.S_ISDIR(info.st_mode)
                    found.append((name, is_dir, info.st_size, info.st_mtime_ns))
                    if is_dir:
                        pending.append((Path(entry.path), name + "/"))
            name = ""
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise DeliveryRejected(
            f"{_shown(name or prefix or 'the delivery folder')} cannot be read: {_os_error(exc)}",
            hint="Give the daemon's user read access to everything in the delivery, then move "
            "the folder back into the intake folder.",
        ) from None
    return tuple(sorted(found))


@dataclass
class SettleTracker:
    """Whether a folder has stayed unchanged for `settle_s` seconds, from snapshots taken on
    successive scans (no sleeping: the scan loop supplies the time)."""

    settle_s: float
    #: Per folder: a fingerprint of its last snapshot (not the snapshot: thousands of pending
    #: folders of up to MAX_ENTRIES entries each would be kept in memory) and when it was seen.
    _seen: dict[str, tuple[int, float]] = field(default_factory=dict)

    def settled(self, key: str, current: Hashable | None, now: float) -> bool:
        if current is None:
            self._seen.pop(key, None)
            return False
        fingerprint = hash(current)
        previous = self._seen.get(key)
        if previous is None or previous[0] != fingerprint:
            self._seen[key] = (fingerprint, now)
            return self.settle_s <= 0
        return now - previous[1] >= self.settle_s

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)

    def retain(self, keys: Iterable[str]) -> None:
        """Drop the state of folders that are gone."""
        keep = set(keys)
        for key in [k for k in self._seen if k not in keep]:
            del self._seen[key]
