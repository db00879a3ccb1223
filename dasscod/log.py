"""Logging: every line one JSON object (or one readable line on a terminal), whoever logs it.

Our own code logs through structlog; libraries (uvicorn, pymongo, asyncssh, httpx) log through
the standard library. Both end in the same `structlog.stdlib.ProcessorFormatter` on one stderr
handler, so a library's traceback becomes the `exception` field of one line instead of many
plain-text lines that break a JSON log pipeline.

The keys an operator can rely on (README, "Logs"): `timestamp` (ISO 8601, UTC), `level`,
`event` (the message), `logger` (the module), and where they apply `asset_guid`, `job`,
`attempt`, `cluster`, `supervisor`, `error` (what went wrong, one line) and `exception` (a
traceback). Supervisors bind them, so one filter follows an asset through the whole daemon.
"""

from __future__ import annotations

import logging
import sys
from types import TracebackType
from typing import Literal

import structlog

#: Libraries are quiet unless they warn: their INFO lines (every HTTP request, every SSH
#: channel) would drown the daemon's own.
LIBRARY_LEVEL = logging.WARNING


def _processors() -> list[structlog.typing.Processor]:
    """What every record gets, from structlog or from the standard library."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(
    level: str = "INFO", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # A traceback is one field; the console renderer prints it readably itself.
            *([structlog.processors.format_exc_info] if json_output else []),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LIBRARY_LEVEL)
    # Our loggers pass everything on; structlog's filtering wrapper applies `level`.
    logging.getLogger("dasscod").setLevel(logging.DEBUG)
    logging.getLogger("dassco_hpc").setLevel(logging.getLevelName(level))
    # uvicorn's own loggers carry handlers of their own unless told otherwise: ours only.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    structlog.configure(
        processors=[
            *_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )


def _log_uncaught(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    """The last words of a process that dies of an exception: one JSON line, like the rest."""
    logging.getLogger("dasscod").critical(
        "uncaught exception; exiting", exc_info=(kind, error, trace)
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
