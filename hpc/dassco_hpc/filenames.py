"""The one rule for the name of an asset's file.

A file name passes through folder intake, the intake API, the listener's file routes and the
cluster's `load` module; each used to have its own idea of a good name, so intake could accept
a name (with a backslash, say) that `load` refused hours later. They all ask this module now.

The rule: 1 to MAX_LENGTH characters, ASCII letters, digits, `.`, `_` and `-`, starting with a
letter or a digit. So a name is never a path, never hidden (intake ignores dot files), never
`.` or `..`, and it survives every file system, URL path and shell the asset meets.
MAX_LENGTH leaves room under NAME_MAX (255 bytes) for the temporary names made from it
(`.<name>.download`, `.<name>.part`).

This file is mirrored, byte for byte, as `hpc/dassco_hpc/filenames.py` (the cluster package
depends on nothing from the daemon); tests/unit/test_filenames.py checks that they agree.
"""

from __future__ import annotations

import re

MAX_LENGTH = 200
#: The rule as a regular expression (for route and schema patterns).
FILE_NAME_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_LENGTH - 1}}}$"
_ALLOWED = re.compile(r"[A-Za-z0-9._-]")


def file_name_problem(name: str) -> str | None:
    """Why `name` is not a valid file name of an asset, for a person; None when it is."""
    if not name:
        return "a file name is needed"
    if len(name) > MAX_LENGTH:
        return f"file name {name[:40]!r}... is {len(name)} characters long (at most {MAX_LENGTH})"
    bad = sorted({c for c in name if not _ALLOWED.fullmatch(c)})
    if bad:
        shown = " ".join(repr(c) for c in bad[:5])
        return (
            f"file name {name!r} holds {shown}: only ASCII letters, digits, '.', '_' and '-' "
            "are allowed"
        )
    if not name[0].isalnum():
        return f"file name {name!r} must start with a letter or a digit"
    return None


def is_file_name(name: str) -> bool:
    """Whether `name` is a valid file name of an asset."""
    return file_name_problem(name) is None
