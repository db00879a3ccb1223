"""The Slurm scheduler: jobs submitted with sbatch and followed with squeue and sacct, through
any transport (this machine, or a login node over SSH).

Submission. Each attempt becomes a batch script whose ``#SBATCH`` lines carry the spec (name,
partition, account, time, CPUs, memory, output files, a ``--comment=dasscod`` marker) and
whose body exports the job's environment, enters the workdir and execs the command. The
environment holds the callback token, so it never appears on a command line (``ps`` on the
login node shows command lines to every user): the script travels on the transport's stdin,
is written to ``<state_dir>/<name>.sh`` with mode 0600 and submitted from there with
``sbatch --parsable``. One command does all of it; the only values on its command line are
the state folder and the validated job name.

Finding jobs again. Slurm remembers the job by its name, ``dassco.{guid}.{job}.{attempt}``:
``lookup`` asks squeue (live jobs, and finished ones still in slurmctld's memory for
MinJobAge) and then sacct (older ones) -- one call each, whatever the number of names.

Status. One ``squeue --states=all --jobs=...`` call for all jobs; sacct, again in one call,
only for the jobs squeue no longer knows. sacct needs slurmdbd; on a cluster without it
(e.g. the test cluster, see tests/infra/setup_cluster.sh) plain sacct says accounting storage
is disabled and ``sacct --completion`` reads the job completion log instead. In ``auto`` mode
the adapter notices that once and uses --completion from then on.

Nothing here keeps state between calls except that choice, so a fresh instance (a restarted
daemon) finds every job its predecessor submitted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Literal

from dasscod.cluster import batch
from dasscod.cluster import slurm_parse as parse
from dasscod.cluster.base import (
    CommandResult,
    JobInfo,
    JobSpec,
    SchedulerError,
    SchedulerState,
    Transport,
)

#: Which sacct to ask about jobs that left the queue: ``sacct`` (slurmdbd), ``completion``
#: (`sacct --completion`, the jobcomp/filetxt log on the machine the commands run on),
#: ``auto`` (sacct, switching to completion when the cluster has no accounting storage), or
#: ``none`` (never: such jobs are reported UNKNOWN).
Accounting = Literal["auto", "sacct", "completion", "none"]

#: Marker in every job's comment: tells an operator (and squeue -O comment) which jobs are ours.
COMMENT = "dasscod"
#: Query and cancel commands answer quickly or the controller is in trouble.
QUERY_TIMEOUT_S = 60.0
#: sbatch may wait for a busy controller (it retries internally).
SUBMIT_TIMEOUT_S = 120.0
#: How far back lookup asks sacct (whose default for name queries is "since midnight").
LOOKUP_DAYS = 14

#: Writes the script from stdin to <state_dir>/<name>.sh (0600: it holds the token) and submits
#: it. Only the write gets umask 077: sbatch passes its umask on to the job. Run as
#: `sh -c SUBMIT dasscod-sbatch STATE_DIR NAME`; the values are positional arguments, never
#: part of the script text.
SUBMIT = batch.WRITE_SCRIPT + """\
exec sbatch --parsable -- "$1/$2.sh"
"""

DIALECT = batch.Dialect(
    system="Slurm", tool="sbatch", submit=SUBMIT, name=parse.NAME, job_id=parse.JOB_ID,
    partition="partition", parse_job_id=parse.parse_job_id,
    permanent=parse.submit_error_is_permanent,
)  # fmt: skip


class SlurmScheduler(batch.BatchScheduler):
    """Slurm through a transport. See the module docstring for how jobs are found again."""

    kind = "slurm"
    dialect = DIALECT

    def __init__(
        self,
        transport: Transport,
        *,
        state_dir: PurePosixPath,
        partition: str | None = None,
        account: str | None = None,
        accounting: Accounting = "auto",
        sbatch_options: Sequence[str] = (),
        submit_timeout_s: float = SUBMIT_TIMEOUT_S,
    ) -> None:
        """`partition` and `account` apply to jobs whose spec names none. `sbatch_options`
        are extra ``#SBATCH`` lines (e.g. ``--qos=short``), set by the operator, not by
        input; they go into the script, not onto a command line."""
        DIALECT.check_defaults(partition, account)
        for option in sbatch_options:
            if not option.startswith("--") or "\n" in option:
                raise ValueError(f"sbatch option {option!r}: must be one '--name[=value]'")
        self.transport = transport
        self.state_dir = state_dir
        self.partition = partition
        self.account = account
        self.accounting: Accounting = accounting
        self.sbatch_options = tuple(sbatch_options)
        self.submit_timeout_s = submit_timeout_s

    # -- submission (submit: batch.BatchScheduler, with this dialect)

    def render(self, spec: JobSpec) -> str:
        """The batch script for one attempt. Raises a non-retryable SchedulerError for a spec
        that cannot be put into a script safely."""
        partition, account = DIALECT.placement(spec, partition=self.partition,
                                               account=self.account)
        output = self.state_dir / spec.name
        directives = [
            f"--job-name={spec.name}",
            f"--comment={COMMENT}",
            *([f"--partition={partition}"] if partition else []),
            *([f"--account={account}"] if account else []),
            # Slurm counts time limits in minutes.
            f"--time={max(1, math.ceil(spec.time_limit_s / 60))}",
            "--nodes=1",
            "--ntasks=1",
            f"--cpus-per-task={spec.cpus}",
            f"--mem={spec.memory_mb}M",
            f"--output={output}.out",
            f"--error={output}.err",
            *self.sbatch_options,
        ]
        return batch.script("#SBATCH", directives, spec)

    # -- queries

    async def lookup(self, names: Iterable[str]) -> dict[str, JobInfo]:
        """Names that are not ours (fail the name pattern) cannot be Slurm jobs of ours and
        are simply absent from the answer."""
        wanted = sorted({n for n in names if parse.NAME.fullmatch(n)})
        if not wanted:
            return {}
        result = await self._query(
            ["squeue", "--noheader", "--states=all", f"--name={','.join(wanted)}",
             f"--Format={parse.SQUEUE_FORMAT}"]
        )  # fmt: skip
        found = parse.best_by_name(parse.parse_squeue(result.stdout), wanted)
        missing = [n for n in wanted if n not in found]
        if missing:
            records = await self._accounting(
                [f"--name={','.join(missing)}", f"--starttime=now-{LOOKUP_DAYS}days"]
            )
            found.update(parse.best_by_name(records, missing))
        return {name: record.info() for name, record in found.items()}

    async def status(self, jobs: Mapping[str, str]) -> dict[str, JobInfo]:
        valid, infos = DIALECT.valid_ids(jobs)
        if not valid:
            return infos
        result = await self._query(
            ["squeue", "--noheader", "--states=all", f"--jobs={','.join(valid)}",
             f"--Format={parse.SQUEUE_FORMAT}"],
            gone_ok=True,
        )  # fmt: skip
        records = {r.job_id: r for r in parse.parse_squeue(result.stdout) if r.job_id in valid}
        gone = [job_id for job_id in valid if job_id not in records]
        unaccounted: str | None = None
        if gone:
            try:
                accounted = await self._accounting([f"--jobs={','.join(gone)}"])
            except SchedulerError as exc:
                # A job squeue no longer lists ended at least MinJobAge ago: it is over, sacct
                # would only say how. A broken sacct must not hold up the answer for the jobs
                # squeue does list (their time limits, their ends). lookup, where "not found"
                # would mean "submit again", does not degrade like this.
                accounted, unaccounted = [], str(exc)
            for rec in accounted:
                # A job id can come back more than once (ids restart when slurmctld loses its
                # state): the record with our name is the one we mean.
                if rec.job_id in gone and (
                    rec.job_id not in records or rec.name == valid[rec.job_id]
                ):
                    records[rec.job_id] = rec
        for job_id, name in valid.items():
            record = records.get(job_id)
            if record is None:
                infos[job_id] = JobInfo(job_id, name, SchedulerState.UNKNOWN,
                                        reason=self._forgotten(job_id, unaccounted))
            elif record.name != name:
                infos[job_id] = JobInfo(job_id, name, SchedulerState.UNKNOWN,
                                        reason=f"Slurm job {job_id} is {record.name!r}, not ours")
            else:
                infos[job_id] = record.info()
        return infos

    async def ours(self) -> list[JobInfo]:
        """The live jobs this adapter submitted (their scripts are in its state folder), in
        one squeue call: how the watcher finds jobs no live attempt accounts for."""
        result = await self._query(
            ["squeue", "--noheader", "--me", f"--Format={parse.OURS_FORMAT}"]
        )
        return parse.parse_ours(result.stdout, str(self.state_dir))

    async def cancel(self, job_id: str) -> None:
        """scancel says nothing (and exits 0) for a job that has already ended or is unknown,
        which is what the watcher wants: cancelling a job that is not running is no error."""
        DIALECT.check_job_id(job_id)
        result = await self.transport.run(["scancel", job_id], timeout=QUERY_TIMEOUT_S)
        if result.exit_status != 0 and parse.INVALID_JOB_ID not in result.stderr:
            raise SchedulerError(
                f"scancel {job_id} failed: {batch.message(result)}", retryable=True
            )

    # -- helpers

    async def _query(self, argv: list[str], *, gone_ok: bool = False) -> CommandResult:
        """Run a query; squeue's "Invalid job id specified" (the only job asked about left the
        queue) is an empty answer when `gone_ok`."""
        result = await self.transport.run(argv, timeout=QUERY_TIMEOUT_S)
        if result.exit_status == 0:
            return result
        if gone_ok and parse.INVALID_JOB_ID in result.stderr:
            return CommandResult(0, "", "")
        raise SchedulerError(
            f"{argv[0]} failed (exit status {result.exit_status}): {batch.message(result)}",
            retryable=True,
        )

    async def _accounting(self, selection: list[str]) -> list[parse.Record]:
        """One sacct call (two, once, in auto mode on a cluster without slurmdbd)."""
        if self.accounting == "none":
            return []
        argv = ["sacct", "--allocations", "--noheader", "--parsable2",
                f"--format={parse.SACCT_FIELDS}", *selection]  # fmt: skip
        if self.accounting == "completion":
            argv.insert(1, "--completion")
        result = await self.transport.run(argv, timeout=QUERY_TIMEOUT_S)
        if (
            result.exit_status != 0
            and self.accounting == "auto"
            and parse.ACCOUNTING_DISABLED in result.stderr.lower()
        ):
            self.accounting = "completion"
            return await self._accounting(selection)
        if result.exit_status != 0:
            raise SchedulerError(
                f"sacct failed (exit status {result.exit_status}): {batch.message(result)}",
                retryable=True,
            )
        return parse.parse_sacct(result.stdout)

    def _forgotten(self, job_id: str, unaccounted: str | None = None) -> str:
        if self.accounting == "none":
            return f"job {job_id} left the queue (no accounting configured to ask)"
        if unaccounted is not None:
            return (f"job {job_id} left the queue; how it ended is unknown because {unaccounted}"
                    " (check sacct on the cluster)")
        return f"Slurm no longer knows job {job_id} (not in squeue nor in sacct)"

