"""MongoDB errors by kind: what a caller should do about one.

- `OUTAGE`: the server cannot be reached or did not answer in time (network, elections,
  server selection, client-side timeouts). Wait and try again; nothing is wrong with the data.
- `FATAL`: authentication, authorisation or configuration (a wrong password, a user without
  rights on the database, a malformed URI). Retrying cannot help: the daemon stops and says why.
- `TRANSIENT`: any other `PyMongoError` (disk full, a write conflict, a server-side failure).
  The operation failed but the input is not at fault: leave it where it is and try later.

Callers must never treat a MongoDB error as a verdict on the data (for example quarantine a
delivery because its insert failed)."""

from __future__ import annotations

import enum

from pymongo.errors import (
    AutoReconnect,
    ConfigurationError,
    ConnectionFailure,
    ExecutionTimeout,
    InvalidURI,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

#: Server error codes that no retry can fix (src/mongo/base/error_codes.yml):
#: Unauthorized, AuthenticationFailed, and the user/role lookups of a misconfigured account.
FATAL_CODES = frozenset({13, 18, 11, 31, 8000})


class MongoErrorKind(enum.Enum):
    OUTAGE = "outage"
    FATAL = "fatal"
    TRANSIENT = "transient"


def error_kind(exc: BaseException) -> MongoErrorKind | None:
    """The kind of a MongoDB error, or None when `exc` is not one."""
    if isinstance(exc, (ConfigurationError, InvalidURI)):
        return MongoErrorKind.FATAL
    if isinstance(exc, OperationFailure) and exc.code in FATAL_CODES:
        return MongoErrorKind.FATAL
    if isinstance(
        exc,
        (ConnectionFailure, AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError,
         ExecutionTimeout, WTimeoutError),
    ):
        return MongoErrorKind.OUTAGE
    if isinstance(exc, PyMongoError):
        return MongoErrorKind.OUTAGE if exc.timeout else MongoErrorKind.TRANSIENT
    return None


def is_fatal(exc: BaseException) -> bool:
    return error_kind(exc) is MongoErrorKind.FATAL


def is_outage(exc: BaseException) -> bool:
    return error_kind(exc) is MongoErrorKind.OUTAGE


def describe(exc: BaseException) -> str:
    """The server's own message, without PyMongo's multi-line topology dump."""
    if isinstance(exc, OperationFailure):
        message = (exc.details or {}).get("errmsg") or str(exc)
        return f"{message} (code {exc.code})"
    text = str(exc)
    # Server selection appends ", Timeout: ..., Topology Description: <...>" and the
    # configured timeouts: the first part is the reason.
    for tail in (", Timeout:", " (configured timeouts:"):
        text = text.split(tail, 1)[0]
    return text.strip() or type(exc).__name__


class MongoConfigurationError(RuntimeError):
    """MongoDB refused us for a reason no retry can fix: the daemon stops with this message."""
