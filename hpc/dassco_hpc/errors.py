"""Exceptions shared by the client, the runner and the modules."""

from __future__ import annotations

from typing import Any


class ModuleFailed(Exception):
    """Raised by a module to report a failure it understands.

    `retryable` tells the daemon whether another attempt could help (a network glitch: yes;
    an unreadable image: no).
    """

    def __init__(self, reason: str, retryable: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class ConfigError(Exception):
    """The environment or the command line is missing something or holds a bad value."""


class CallbackError(Exception):
    """A call to the daemon's listener did not succeed."""

    def __init__(self, method: str, path: str, message: str) -> None:
        super().__init__(f"{method} {path}: {message}")
        self.method = method
        self.path = path


class CallbackRejected(CallbackError):
    """The listener answered with a permanent refusal: sending again cannot help.

    `status` is the HTTP status (None when the refusal came from below HTTP, e.g. a TLS
    certificate that does not verify).
    """

    def __init__(self, method: str, path: str, status: int | None, detail: str) -> None:
        what = f"HTTP {status}" if status is not None else "refused"
        hint = ""
        if status in (401, 403):
            hint = " (the job token DASSCO_TOKEN was refused: wrong, expired or for another job)"
        super().__init__(method, path, f"rejected, {what}: {detail}{hint}")
        self.status = status
        self.detail = detail

    @property
    def auth(self) -> bool:
        """The token was refused."""
        return self.status in (401, 403)


class CallbackUndelivered(CallbackError):
    """No acknowledgement before the deadline. `body` is what was to be sent, so that the call
    can be saved and replayed."""

    def __init__(self, method: str, path: str, body: Any, last_error: str) -> None:
        super().__init__(method, path, f"not acknowledged before the deadline: {last_error}")
        self.body = body
        self.last_error = last_error
