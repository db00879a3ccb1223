"""MongoDB errors sorted by what the daemon does about them."""

from __future__ import annotations

import pytest
from pymongo.errors import (
    AutoReconnect,
    ConfigurationError,
    DuplicateKeyError,
    InvalidURI,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from dasscod.store.errors import MongoErrorKind, describe, error_kind


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ServerSelectionTimeoutError("127.0.0.1:9: connection refused"), MongoErrorKind.OUTAGE),
        (AutoReconnect("primary stepped down"), MongoErrorKind.OUTAGE),
        (NetworkTimeout("timed out"), MongoErrorKind.OUTAGE),
        (OperationFailure("Authentication failed.", code=18), MongoErrorKind.FATAL),
        (OperationFailure("not authorized on dasscod", code=13), MongoErrorKind.FATAL),
        (ConfigurationError("unknown option"), MongoErrorKind.FATAL),
        (InvalidURI("bad uri"), MongoErrorKind.FATAL),
        (OperationFailure("No space left on device", code=14031), MongoErrorKind.TRANSIENT),
        (DuplicateKeyError("E11000", code=11000), MongoErrorKind.TRANSIENT),
        (ValueError("not mongo"), None),
    ],
)
def test_each_error_has_the_kind_that_says_what_to_do(
    exc: BaseException, kind: MongoErrorKind | None
) -> None:
    assert error_kind(exc) is kind


def test_describe_keeps_the_servers_message_and_drops_the_topology_dump() -> None:
    failure = OperationFailure(
        "Authentication failed.", code=18, details={"errmsg": "Authentication failed.", "code": 18}
    )
    assert describe(failure) == "Authentication failed. (code 18)"
    timeout = ServerSelectionTimeoutError(
        "127.0.0.1:9: [Errno 111] Connection refused, Timeout: 0.5s, Topology Description: <x>"
    )
    assert describe(timeout) == "127.0.0.1:9: [Errno 111] Connection refused"
