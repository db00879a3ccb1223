"""What a module is given: who it runs for, where, and a way to talk to the daemon."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dassco_hpc.client import CallbackClient
from dassco_hpc.log import Logger, stderr_log


@dataclass(frozen=True)
class JobContext:
    """Passed to a module's function. The module runs with `workdir` as its current
    directory and returns its results (see `dassco_hpc.results`)."""

    guid: str
    job: str
    attempt: int
    #: The asset's work folder on the cluster (exists; the current directory).
    workdir: Path
    #: The folder holding the asset's files on a shared disk, if the daemon named one.
    asset_files: Path | None
    #: For extra calls to the listener (metadata, links, derivatives, files).
    client: CallbackClient = field(repr=False)
    hpc_job_id: str | None = None
    logger: Logger = field(default=stderr_log, repr=False)

    @property
    def asset_guid(self) -> str:
        return self.guid

    def log(self, message: str) -> None:
        """One line to the job's log (stderr), prefixed with the asset, job and attempt."""
        self.logger(f"{self.guid} {self.job}#{self.attempt}: {message}")

    def metadata(self) -> dict[str, Any]:
        """The asset's metadata document, read from the daemon."""
        return self.client.metadata(self.guid)

    def links(self) -> dict[str, Any]:
        """Where the asset's files can be fetched (ARS links; local paths when available)."""
        return self.client.links(self.guid)
