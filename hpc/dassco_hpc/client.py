"""HTTP client for the daemon's listener (`DASSCO_CALLBACK_URL`).

Every call is retried until the listener acknowledges it: a daemon restart, a short network
cut, a 503 or a 429 lose nothing. Retries back off exponentially with full jitter and honour
`Retry-After`; they stop at a total deadline, after which `CallbackUndelivered` carries the
call so that it can be saved and replayed. A permanent refusal (401/403/404/422, other 4xx)
raises `CallbackRejected` at once. Sending a callback twice is safe: the listener answers a
duplicate with `applied: false`, which is still an acknowledgement.
"""

from __future__ import annotations

# socket.getaddrinfo encodes host names with this codec: imported here, a warm launcher
# (dasscod's direct scheduler) pays for it once instead of in every job.
import encodings.idna  # noqa: F401
import functools
import http.client
import json
import random
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.message import Message
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

from dassco_hpc._version import __version__
from dassco_hpc.config import ClientSettings, callback_url, required
from dassco_hpc.errors import CallbackRejected, CallbackUndelivered, ConfigError
from dassco_hpc.log import Logger, stderr_log, utc_timestamp

USER_AGENT = f"dassco-hpc/{__version__}"
#: Answers after which sending again can help.
RETRYABLE_STATUS = frozenset({408, 425, 429})
#: The listener caps `reason` and `exception` at these lengths (422 beyond).
REASON_MAX = 4000
EXCEPTION_MAX = 20000


@dataclass(frozen=True)
class Ack:
    """The listener's answer to a callback. `applied: false` means a duplicate or an event no
    longer relevant: it is acknowledged all the same and must not be sent again."""

    applied: bool
    status: str | None = None
    detail: str | None = None

    @classmethod
    def parse(cls, data: Any) -> Ack:
        if not isinstance(data, Mapping):
            return cls(applied=True)
        status, detail = data.get("status"), data.get("detail")
        return cls(
            applied=bool(data.get("applied", True)),
            status=None if status is None else str(status),
            detail=None if detail is None else str(detail),
        )


class _Transient(Exception):
    def __init__(self, why: str, retry_after: float | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.retry_after = retry_after


def retry_after_s(
    value: str | None, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())


def _error_detail(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or "no detail"
    if isinstance(data, Mapping) and "detail" in data:
        detail = data["detail"]
        text = detail if isinstance(detail, str) else json.dumps(detail)
    return text[:2000] or "no detail"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError):
        if isinstance(exc.reason, str):
            return exc.reason
        exc = exc.reason
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def truncate_head(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 15] + " ...(truncated)"


def truncate_tail(text: str, limit: int) -> str:
    """Keep the end of a traceback: the innermost frames and the exception itself."""
    marker = "...(truncated)\n"
    return text if len(text) <= limit else marker + text[-(limit - len(marker)) :]


CA_BUNDLE_ENV = "DASSCO_CA_BUNDLE"


def ca_bundle_from(env: Mapping[str, str]) -> str | None:
    """$DASSCO_CA_BUNDLE: the CA file the listener's certificate is checked against."""
    path = env.get(CA_BUNDLE_ENV, "").strip()
    if path and not Path(path).is_file():
        raise ConfigError(f"{CA_BUNDLE_ENV}={path} is not a file")
    return path or None


@dataclass(frozen=True)
class CallbackClient:
    """Calls the listener with the job's bearer token. Timing values are in seconds."""

    base_url: str
    token: str = field(repr=False)
    deadline_s: float = ClientSettings.deadline_s
    timeout_s: float = ClientSettings.timeout_s
    backoff_s: float = ClientSettings.backoff_s
    backoff_max_s: float = ClientSettings.backoff_max_s
    log: Logger = field(default=stderr_log, repr=False, compare=False)
    #: PEM file of the CA(s) the listener's certificate is checked against (an https URL);
    #: None: the system's trusted CAs.
    ca_bundle: str | None = None
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    jitter: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        token: str | None = None,
        base_url: str | None = None,
        log: Logger = stderr_log,
    ) -> CallbackClient:
        """DASSCO_CALLBACK_URL, DASSCO_TOKEN and the DASSCO_CALLBACK_*_S timings; raises
        ConfigError naming what is missing."""
        settings = ClientSettings.from_env(env)
        url = (
            callback_url(base_url, "the callback URL")
            if base_url
            else callback_url(required(env, "DASSCO_CALLBACK_URL"), "DASSCO_CALLBACK_URL")
        )
        return cls(
            base_url=url,
            token=token or required(env, "DASSCO_TOKEN"),
            ca_bundle=ca_bundle_from(env),
            deadline_s=settings.deadline_s,
            timeout_s=settings.timeout_s,
            backoff_s=settings.backoff_s,
            backoff_max_s=settings.backoff_max_s,
            log=log,
        )

    @functools.cached_property
    def _tls(self) -> ssl.SSLContext | None:
        """Certificates and host names are always verified; against `ca_bundle` if given."""
        if not self.base_url.startswith("https:"):
            return None
        try:
            return ssl.create_default_context(cafile=self.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise CallbackRejected("TLS", self.base_url, None,
                                   f"cannot use the CA bundle {self.ca_bundle}: {exc}") from None

    def with_deadline(self, deadline_s: float) -> CallbackClient:
        return replace(self, deadline_s=deadline_s)

    def with_base_url(self, base_url: str) -> CallbackClient:
        return replace(self, base_url=base_url.rstrip("/"))

    # ------------------------------------------------------------------ generic calls

    def url(self, path: str) -> str:
        return f"{self.base_url.rstrip('/')}/{path.lstrip('/')}"

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, {} if body is None else body)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        raw_answer: bool = False,
    ) -> Any:
        """Send until acknowledged; return the decoded JSON answer (None if empty). `raw` sends
        bytes (a file) instead of a JSON body; `raw_answer` returns the answer's bytes."""
        data = (
            raw
            if raw is not None
            else (None if body is None else json.dumps(body, allow_nan=False).encode())
        )
        content_type = "application/octet-stream" if raw is not None else "application/json"
        started = self.clock()
        deadline = started + self.deadline_s
        attempt = 0
        while True:
            attempt += 1
            # The last request may outlive the deadline by up to a second, so that even a
            # tiny deadline gets one real try.
            timeout = min(self.timeout_s, max(deadline - self.clock(), 1.0))
            try:
                return self._once(method, path, data, timeout, content_type, raw_answer)
            except _Transient as exc:
                problem = exc
            remaining = deadline - self.clock()
            if problem.retry_after is not None:
                delay = problem.retry_after
            else:
                delay = self.jitter() * min(
                    self.backoff_max_s, self.backoff_s * 2.0 ** min(attempt - 1, 60)
                )
            if delay >= remaining:
                self.log(
                    f"{method} {path}: not acknowledged ({problem.why}); giving up after "
                    f"{attempt} attempt(s) in {self.clock() - started:.1f} s"
                )
                raise CallbackUndelivered(
                    method, path, body if raw is None else f"<{len(raw)} bytes>", problem.why
                )
            self.log(
                f"{method} {path}: not acknowledged ({problem.why}); retry {attempt} in "
                f"{delay:.2f} s" + (" (Retry-After)" if problem.retry_after is not None else "")
            )
            self.sleep(delay)

    def _once(
        self,
        method: str,
        path: str,
        data: bytes | None,
        timeout: float,
        content_type: str = "application/json",
        raw_answer: bool = False,
    ) -> Any:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if data is not None:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.url(path), data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout,
                                        context=self._tls) as response:
                status = int(response.status)
                raw = response.read()
        except urllib.error.HTTPError as exc:
            self._refused(method, path, exc)
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise CallbackRejected(method, path, None, _describe(exc)) from None
            raise _Transient(_describe(exc)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(_describe(exc)) from None
        if raw_answer:
            return raw
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise CallbackRejected(
                method, path, status, f"answer is not JSON: {raw[:200]!r}"
            ) from None

    @staticmethod
    def _refused(method: str, path: str, exc: urllib.error.HTTPError) -> NoReturn:
        status = exc.code
        headers: Message | None = exc.headers
        try:
            detail = _error_detail(exc.read())
        except (OSError, http.client.HTTPException):
            detail = "no detail"
        finally:
            exc.close()
        why = f"HTTP {status}: {detail}"
        if status >= 500 or status in RETRYABLE_STATUS:
            after = retry_after_s(headers.get("Retry-After") if headers is not None else None)
            raise _Transient(why, after) from None
        raise CallbackRejected(method, path, status, detail) from None

    # ------------------------------------------------------------------ job lifecycle

    @staticmethod
    def _job(asset_guid: str, job: str, attempt: int) -> dict[str, Any]:
        return {
            "asset_guid": asset_guid,
            "job": job,
            "attempt": attempt,
            "timestamp": utc_timestamp(),
        }

    def started(
        self, asset_guid: str, job: str, attempt: int, *, hpc_job_id: str | None = None
    ) -> Ack:
        body = self._job(asset_guid, job, attempt)
        if hpc_job_id:
            body["hpc_job_id"] = hpc_job_id[:100]
        return Ack.parse(self.post("/jobs/started", body))

    def finished(
        self,
        asset_guid: str,
        job: str,
        attempt: int,
        *,
        results: Mapping[str, Any],
        run_time_s: float | None = None,
    ) -> Ack:
        body = self._job(asset_guid, job, attempt)
        body["run_time_s"] = run_time_s
        body["results"] = dict(results)
        return Ack.parse(self.post("/jobs/finished", body))

    def failed(
        self,
        asset_guid: str,
        job: str,
        attempt: int,
        *,
        reason: str,
        retryable: bool,
        exit_code: int | None = None,
        exception: str | None = None,
        run_time_s: float | None = None,
    ) -> Ack:
        body = self._job(asset_guid, job, attempt)
        body.update(
            run_time_s=run_time_s,
            reason=truncate_head(reason, REASON_MAX) or "no reason given",
            exit_code=exit_code,
            retryable=retryable,
            exception=None if exception is None else truncate_tail(exception, EXCEPTION_MAX),
        )
        return Ack.parse(self.post("/jobs/failed", body))

    # ------------------------------------------------------------------ reads and asset calls

    @staticmethod
    def _asset(guid: str, tail: str) -> str:
        return f"/assets/{quote(guid, safe='')}/{tail}"

    def metadata(self, guid: str) -> dict[str, Any]:
        """The asset's metadata document."""
        data = self.get(self._asset(guid, "metadata"))
        return dict(data) if isinstance(data, Mapping) else {}

    def links(self, guid: str) -> dict[str, Any]:
        """`{asset_guid, files: [{name, type, check_sum, file_size, ars_link, local_path}]}`."""
        data = self.get(self._asset(guid, "links"))
        return dict(data) if isinstance(data, Mapping) else {}

    def get_file(self, asset_guid: str, name: str) -> bytes:
        """One of the asset's files from the daemon (for a cluster without its disk)."""
        path = f"/assets/{quote(asset_guid, safe='')}/files/{quote(name, safe='')}"
        data = self.request("GET", path, raw_answer=True)
        return data if isinstance(data, bytes) else b""

    def put_file(self, asset_guid: str, name: str, data: bytes) -> Ack:
        """Hand a reported file's bytes to the daemon, which keeps it for its ARS sync."""
        path = f"/assets/{quote(asset_guid, safe='')}/files/{quote(name, safe='')}"
        return Ack.parse(self.request("PUT", path, raw=data))

    def register_derivative(self, metadata: Mapping[str, Any]) -> Ack:
        """A new derivative asset (full metadata document with `parent_guid`)."""
        return Ack.parse(self.post("/derivatives", dict(metadata)))

    def add_file(
        self, guid: str, *, name: str, type: str, check_sum: int, file_size_mb: float,
        sha256: str | None = None,
    ) -> Ack:
        """A file of one of the asset's derivatives (CRC-32 checksum, size in MB, and the hex
        SHA-256 the daemon checks the bytes against when they are sent with `put_file`)."""
        body: dict[str, Any] = {"name": name, "type": type, "check_sum": check_sum,
                                "file_size": file_size_mb}
        if sha256 is not None:
            body["sha256"] = sha256
        return Ack.parse(self.post(self._asset(guid, "files"), body))

    def derivative_uploaded(self, guid: str) -> Ack:
        return Ack.parse(self.post(self._asset(guid, "derivative-uploaded")))

    def derivative_failed(
        self, guid: str, *, ppi: int | None = None, note: str | None = None
    ) -> Ack:
        return Ack.parse(
            self.post(self._asset(guid, "derivative-failed"), {"ppi": ppi, "note": note})
        )
