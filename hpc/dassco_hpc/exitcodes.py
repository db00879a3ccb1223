"""Process exit codes of `dassco-hpc` (the BSD sysexits values where one fits)."""

from __future__ import annotations

OK = 0
#: The module failed; the failure was reported to the daemon.
MODULE_FAILED = 1
#: The listener permanently refused a callback (404 unknown asset, 422 bad body, ...).
UNAVAILABLE = 69  # EX_UNAVAILABLE
#: A callback could not be delivered before the deadline; it was saved for `dassco-hpc replay`.
TEMPFAIL = 75  # EX_TEMPFAIL
#: The listener refused the job's token (401/403).
NOPERM = 77  # EX_NOPERM
#: Missing or bad environment, unknown module, work folder not usable.
CONFIG = 78  # EX_CONFIG


def for_signal(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number."""
    return 128 + signum
