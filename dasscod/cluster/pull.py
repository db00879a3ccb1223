"""Pull clusters: the daemon never runs a command there. An agent on the login node
(`dassco-hpc agent`) takes claimed jobs from the listener (`/api/v1/agent/...`), submits the
batch script the daemon rendered for it and reports the job ids and states it observes.

`PullScheduler` only renders scripts (with the Torque or Slurm adapter, which need no
transport to render); everything that would reach the cluster is refused, so a code path
that forgets the cluster is pull fails loudly instead of running a command here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dasscod.cluster.base import (
    Command,
    CommandResult,
    JobInfo,
    JobSpec,
    SchedulerError,
    Transport,
    TransportError,
)
from dasscod.cluster.slurm import SlurmScheduler
from dasscod.cluster.torque import TorqueScheduler


class NoTransport(Transport):
    """The transport of a pull cluster: there is none."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def execute(self, command: Command) -> CommandResult:
        raise TransportError(f"{self.name} is a pull cluster: the daemon runs no command there")


class PullScheduler:
    kind = "pull"

    def __init__(self, renderer: TorqueScheduler | SlurmScheduler) -> None:
        self.renderer = renderer
        #: What the agent submits with: "torque" (qsub) or "slurm" (sbatch).
        self.submit_with = renderer.kind
        self.submit_timeout_s = renderer.submit_timeout_s

    def render(self, spec: JobSpec) -> str:
        """The batch script the agent submits. Raises a non-retryable SchedulerError for a
        spec that cannot go into a script safely."""
        return self.renderer.render(spec)

    def refusal(self, message: str, exit_status: int | None) -> SchedulerError:
        """The error for a submission the agent reports refused, with the scheduler's own
        message; retryable unless the message says the request itself is wrong (an unknown
        queue, an impossible resource request), as when the daemon submits itself."""
        dialect = self.renderer.dialect
        status = f" (exit status {exit_status})" if exit_status is not None else ""
        text = message.strip()[-1000:] or "no message"
        return SchedulerError(f"{dialect.tool} refused the job on the cluster{status}: {text}",
                              retryable=not dialect.permanent(message))

    def _refuse(self) -> SchedulerError:
        return SchedulerError("a pull cluster's agent submits and queries its jobs",
                              retryable=False)

    async def submit(self, spec: JobSpec) -> str:
        raise self._refuse()

    async def lookup(self, names: Iterable[str]) -> dict[str, JobInfo]:
        raise self._refuse()

    async def status(self, jobs: Mapping[str, str]) -> dict[str, JobInfo]:
        raise self._refuse()

    async def cancel(self, job_id: str) -> None:
        raise self._refuse()

    async def ours(self) -> list[JobInfo] | None:
        return None  # the agent finds its jobs by name before it submits
