"""The 422 answer to a request that does not validate: short, and always valid JSON.

FastAPI's own answer lists every error with the input that caused it. Two things go wrong
with that on a listener facing cluster networks: a value JSON cannot carry (`1e999` reads as
infinity) made the answer fail to encode, a 500; and a body of 120,000 wrongly typed list
items (240 KB, under the callback cap) made 120,000 errors, 14 MB of answer and 5 s of the
event loop spent encoding them. Here the first `MAX_ERRORS` are answered (with the total)
and an input is echoed only when it is a short scalar.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from dasscod.bounds import INT64_MAX, INT64_MIN

MAX_ERRORS = 20
MAX_ECHO = 200


def install_validation_answer(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        detail = [_brief(error) for error in errors[:MAX_ERRORS]]
        body: dict[str, Any] = {"detail": detail}
        if len(errors) > MAX_ERRORS:
            body["errors"] = len(errors)  # how many there were; only the first are listed
        return JSONResponse(body, status_code=422)


def _brief(error: Any) -> dict[str, Any]:
    brief = {"type": str(error.get("type", "")),
             "loc": [part if isinstance(part, int) else str(part)[:MAX_ECHO]
                     for part in error.get("loc", ())],
             "msg": str(error.get("msg", ""))[:1000]}
    value = error.get("input")
    if _echoable(value):
        brief["input"] = value
    return brief


def _echoable(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= MAX_ECHO
