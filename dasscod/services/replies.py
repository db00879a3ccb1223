"""What a service answers: an acknowledgement of a transition, or a rejection."""

from __future__ import annotations

from dasscod.protocol.callbacks import Ack
from dasscod.store import Applied


class Rejected(Exception):
    """The request is well-formed but refers to something that does not exist, or that its
    sender may not touch. `status_code` is the HTTP answer the listener gives."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def ack(result: Applied, job: str | None = None) -> Ack:
    """The answer to a request that wrote a transition: whether it changed anything, the
    job's status (or the asset's, without a job) and why nothing changed."""
    status = result.track.job(job).status if job else result.track.jobs_status
    return Ack(applied=result.applied, status=str(status),
               detail="; ".join(result.ignored) or None)  # fmt: skip
