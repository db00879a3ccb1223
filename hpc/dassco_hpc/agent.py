"""`dassco-hpc agent --cluster NAME`: the pull-mode agent on a cluster's login node, for
clusters the daemon may not reach. Standard library only.

One run (`--once`, e.g. from cron; `--loop SECONDS` repeats it):

1. list the scheduler's jobs once (qstat -f / squeue) -- ours are named ``dassco.*``;
2. claim jobs from the daemon (each leased to this cluster's agent for a while) and, for each,
   look for it by its name in that listing first: found, it was submitted by a run that died
   before reporting it, so only its id is reported; else its script is written 0600 (it holds
   the job's token) into the state folder and submitted (qsub or sbatch), and the id reported;
   a submission the scheduler refuses (the command exits non-zero) is reported with its
   message, and the daemon applies its retry policy; a command that does not answer ends the
   run (whether it submitted is unknown: the lease runs out and a later run looks the job up
   by name);
3. read the daemon's live jobs, list the scheduler's jobs again (one call), report the state of
   each live job and of every other ``dassco.*`` job still in the scheduler, and cancel the
   jobs the daemon names in its answer (attempts that are no longer live). For a live job
   whose outcome the scheduler does not give (the Slurm wrappers' qstat; Torque after
   keep_completed) the report carries the first line of its exit file,
   ``<state folder>/<name>.exit``, which the Torque job script writes as its last act; the
   daemon reads how the job ended from it. So the cluster's ``state_dir`` in the daemon's
   configuration must be this agent's ``--state-dir``. Other ``dassco.*`` jobs are reported
   only if their script is in the state folder (submitted from here): jobs named like ours
   but submitted elsewhere are left alone, as the daemon's own stray sweep leaves them;
4. remove the files of settled assets the answer names (``forget``: the asset's work folder,
   whose last component must be its guid, and its attempts' script, output and exit files
   in the state folder) and tell the daemon which are gone (``forgotten``); one whose
   removal failed is asked for again by the next answer.

Only one run at a time per state folder (a lock file); an overlapping cron run exits at once.
Exit codes: 0 done, 75 the daemon was unreachable (or a scheduler command failed; the next
run repairs it), 77 the daemon refused the credential, 69 another refusal, 78 configuration.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from dassco_hpc import exitcodes
from dassco_hpc.client import CallbackClient
from dassco_hpc.errors import CallbackRejected, CallbackUndelivered, ConfigError
from dassco_hpc.log import Logger, stderr_log

PREFIX = "dassco."
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,229}")
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\[\]-]{0,99}")
COMMAND_TIMEOUT_S = 120.0
#: The most of an exit file's line sent to the daemon (its API takes 500 characters).
EXIT_FILE_MAX = 300
#: A job's files in the state folder: `<name>` (a folder, if any), its script, output and
#: exit file.
FORGET_SUFFIXES = ("", ".sh", ".sh.tmp", ".out", ".err", ".exit")

TORQUE_STATES = {
    "Q": "PENDING",
    "H": "PENDING",
    "W": "PENDING",
    "T": "PENDING",
    "R": "RUNNING",
    "E": "RUNNING",
    "S": "RUNNING",
}
SLURM_PENDING = {
    "PENDING",
    "CONFIGURING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
    "RESV_DEL_HOLD",
}
SLURM_RUNNING = {"RUNNING", "COMPLETING"}
SLURM_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


class SchedulerFailed(Exception):
    """A scheduler command failed; the next run tries again."""


class SubmitRefused(SchedulerFailed):
    """qsub/sbatch ran and refused the job (non-zero exit status): nothing was submitted."""

    def __init__(self, tool: str, name: str, exit_status: int, complaint: str) -> None:
        super().__init__(f"{tool} {name} refused ({exit_status}): {complaint}")
        self.exit_status = exit_status
        self.complaint = complaint


@dataclass(frozen=True)
class Seen:
    """One job as the scheduler lists it, its state in the daemon's vocabulary."""

    job_id: str
    name: str
    state: str
    exit_code: int | None = None
    reason: str | None = None

    @property
    def ended(self) -> bool:
        return self.state not in ("PENDING", "RUNNING")


def parse_name(name: str) -> tuple[str, str, int] | None:
    """``dassco.{guid}.{job}.{attempt}`` -> (guid, job, attempt); job names have no dots."""
    if not name.startswith(PREFIX):
        return None
    parts = name[len(PREFIX) :].rsplit(".", 2)
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise ConfigError(f"{argv[0]} is not installed (or not on PATH)") from None
    except subprocess.TimeoutExpired:
        raise SchedulerFailed(
            f"{argv[0]} did not answer within {COMMAND_TIMEOUT_S:.0f} s"
        ) from None


def _complaint(done: subprocess.CompletedProcess[str]) -> str:
    return (done.stderr.strip() or done.stdout.strip())[-500:] or "no message"


class Torque:
    kind = "torque"

    def list_jobs(self) -> list[Seen]:
        done = _run(["qstat", "-f", "-1"])
        # 153: Torque's "unknown job"; the Slurm wrappers' qstat exits so when there are none.
        if done.returncode not in (0, 153):
            raise SchedulerFailed(f"qstat failed ({done.returncode}): {_complaint(done)}")
        return parse_qstat(done.stdout)

    def submit(self, script: Path, folder: Path, name: str) -> str:
        done = _run(
            [
                "qsub",
                "-o",
                str(folder / f"{name}.out"),
                "-e",
                str(folder / f"{name}.err"),
                str(script),
            ]
        )
        return _submitted("qsub", name, done, parse_qsub(done.stdout))

    def cancel(self, job_id: str) -> None:
        _run(["qdel", job_id])  # an ended or unknown job is no error


def parse_qstat(text: str) -> list[Seen]:
    jobs: list[Seen] = []
    block: dict[str, str] = {}
    job_id = ""

    def flush() -> None:
        name = block.get("Job_Name", "")
        if job_id and name:
            jobs.append(_torque_seen(job_id, name, block))

    for line in text.splitlines():
        if line.startswith("Job Id:"):
            flush()
            job_id, block = line.split(":", 1)[1].strip(), {}
        elif "=" in line and line[:1].isspace():
            key, value = line.split("=", 1)
            block[key.strip()] = value.strip()
    flush()
    return jobs


def _torque_seen(job_id: str, name: str, block: Mapping[str, str]) -> Seen:
    letter = block.get("job_state", "")
    if letter in TORQUE_STATES:
        return Seen(job_id, name, TORQUE_STATES[letter])
    raw = block.get("exit_status", "")
    try:
        status = int(raw)
    except ValueError:
        return Seen(
            job_id,
            name,
            "UNKNOWN",
            reason=f"ended (state {letter or '?'}); the scheduler keeps no exit status",
        )
    if status == 0:
        return Seen(job_id, name, "COMPLETED", 0)
    if status in (-11, -12):
        return Seen(job_id, name, "TIMEOUT", reason="walltime or CPU time exceeded")
    if status < 0:
        return Seen(job_id, name, "FAILED", reason=f"Torque exit_status {status}")
    return Seen(job_id, name, "FAILED", status - 128 if status > 256 else status)


class Slurm:
    kind = "slurm"

    def list_jobs(self) -> list[Seen]:
        done = _run(["squeue", "--noheader", "--states=all", f"--format={SQUEUE_FORMAT}"])
        if done.returncode != 0:
            raise SchedulerFailed(f"squeue failed ({done.returncode}): {_complaint(done)}")
        return parse_squeue(done.stdout)

    def submit(self, script: Path, folder: Path, name: str) -> str:
        done = _run(["sbatch", "--parsable", "--", str(script)])
        return _submitted("sbatch", name, done, parse_sbatch(done.stdout))

    def cancel(self, job_id: str) -> None:
        _run(["scancel", job_id])


#: squeue's output format the agent asks for; parse_squeue reads exactly this.
SQUEUE_FORMAT = "%i|%j|%T"


def parse_squeue(text: str) -> list[Seen]:
    """``squeue --noheader --format=%i|%j|%T`` lines: id, name, state. A state we do not
    know counts as FAILED (ended), with the state as the reason."""
    jobs = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3 or not parts[0]:
            continue
        job_id, name, state = parts
        state = state.split()[0] if state.strip() else "UNKNOWN"
        if state in SLURM_PENDING:
            mapped = "PENDING"
        elif state in SLURM_RUNNING:
            mapped = "RUNNING"
        elif state in SLURM_ENDED:
            mapped = state
        else:
            mapped = "FAILED"
        jobs.append(Seen(job_id, name, mapped, reason=None if mapped == state else state))
    return jobs


def parse_qsub(stdout: str) -> str | None:
    """The job id qsub prints: ``123.server`` (Torque) or ``123`` (the Slurm wrappers), on
    its first non-empty line; None if that is not a job id."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    return lines[0] if lines and JOB_ID.fullmatch(lines[0]) else None


def parse_sbatch(stdout: str) -> str | None:
    """The job id ``sbatch --parsable`` prints: ``123`` or ``123;cluster``, on its last
    non-empty line (warnings may come first); None if that is not a job id."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    job_id = lines[-1].split(";", 1)[0] if lines else ""
    return job_id if JOB_ID.fullmatch(job_id) else None


def _submitted(
    tool: str, name: str, done: subprocess.CompletedProcess[str], job_id: str | None
) -> str:
    """The job id, or why not: a non-zero exit status is a refusal (nothing was submitted);
    a zero one without a job id leaves it unknown whether the job went in."""
    if done.returncode != 0:
        raise SubmitRefused(tool, name, done.returncode, _complaint(done))
    if job_id is None:
        raise SchedulerFailed(
            f"{tool} {name} printed no job id (exit status 0): "
            f"{_complaint(done)}; a later run looks for it by name"
        )
    return job_id


Scheduler = Torque | Slurm


@dataclass
class Agent:
    cluster: str
    client: CallbackClient
    scheduler: Scheduler
    state_dir: Path
    batch: int = 20
    log: Logger = stderr_log

    def _path(self, tail: str) -> str:
        return f"/agent/{quote(self.cluster, safe='')}/{tail}"

    def run_once(self) -> dict[str, int]:
        """One cycle; returns counts (submitted, found, refused, reported, cancelled,
        forgotten)."""
        counts = {"submitted": 0, "found": 0, "refused": 0, "reported": 0, "cancelled": 0,
                  "forgotten": 0}
        listing = self.scheduler.list_jobs()
        by_name: dict[str, Seen] = {}
        for seen in listing:
            # A live job wins over an ended one of the same name.
            if seen.name not in by_name or by_name[seen.name].ended:
                by_name[seen.name] = seen
        claimed = self.client.post(self._path("claim"), {"max": self.batch}) or []
        for item in claimed:
            name = str(item["name"])
            if not NAME.fullmatch(name):
                self.log(f"skipping a job with an unusable name {name!r}")
                continue
            known = by_name.get(name)
            if known is not None:
                job_id = known.job_id
                counts["found"] += 1
                self.log(f"{name}: already in the scheduler as {job_id}; reporting it")
            else:
                script = self._write_script(name, str(item["script"]))
                try:
                    job_id = self.scheduler.submit(script, self.state_dir, name)
                except SubmitRefused as refused:
                    counts["refused"] += 1
                    self.log(f"{name}: {refused}; reporting it")
                    self.client.post(self._path("refused"), {
                        "asset_guid": item["asset_guid"], "job": item["job"],
                        "attempt": item["attempt"], "exit_status": refused.exit_status,
                        "message": refused.complaint,
                    })  # fmt: skip
                    continue
                counts["submitted"] += 1
                self.log(f"{name}: submitted as {job_id}")
            self.client.post(self._path("submitted"), {
                "asset_guid": item["asset_guid"], "job": item["job"],
                "attempt": item["attempt"], "hpc_job_id": job_id,
            })  # fmt: skip
        live = self.client.get(self._path("jobs")) or []
        listing = self.scheduler.list_jobs()
        by_id = {seen.job_id: seen for seen in listing}
        observed: list[dict[str, Any]] = []
        reported: set[str] = set()
        for job in live:
            job_id = str(job["hpc_job_id"])
            found = by_id.get(job_id)
            seen = (
                found
                if found is not None
                else Seen(
                    job_id,
                    str(job["name"]),
                    "UNKNOWN",
                    reason="the scheduler no longer knows the job",
                )
            )
            entry = _observed(job["asset_guid"], job["job"], int(job["attempt"]), seen)
            if seen.state == "UNKNOWN":
                entry["exit_file"] = self._exit_file(str(job["name"]))
            observed.append(entry)
            reported.add(job_id)
        for seen in listing:
            parsed = parse_name(seen.name)
            if parsed is None or seen.job_id in reported or seen.ended:
                continue
            if not self.submitted_here(seen.name):
                continue  # named like ours, submitted elsewhere: not ours to judge
            observed.append(_observed(*parsed, seen))  # the daemon decides: record or cancel
        answer = self.client.post(self._path("report"), {"jobs": observed}) or {}
        counts["reported"] = len(observed)
        for job_id in answer.get("cancel", []):
            if JOB_ID.fullmatch(str(job_id)):
                self.log(f"cancelling {job_id}: no live attempt accounts for it")
                self.scheduler.cancel(str(job_id))
                counts["cancelled"] += 1
        removed = [guid for order in answer.get("forget", [])
                   if (guid := self._forget(order)) is not None]  # fmt: skip
        if removed:
            self.client.post(self._path("forgotten"), {"asset_guids": removed})
            counts["forgotten"] = len(removed)
        return counts

    def submitted_here(self, name: str) -> bool:
        """Whether the job of this name was submitted from this state folder (its script is
        here): only such jobs are reported besides the daemon's live ones."""
        return bool(NAME.fullmatch(name)) and (self.state_dir / f"{name}.sh").is_file()

    def _forget(self, order: Mapping[str, Any]) -> str | None:
        """Remove a settled asset's files as the daemon asked: its work folder and its
        attempts' files in the state folder. The guid if all are gone (they may have been
        already), None if the order is not one to carry out or a removal failed (the daemon
        asks again)."""
        guid = str(order.get("asset_guid", ""))
        work_dir = PurePosixPath(str(order.get("work_dir", "")))
        names = [str(n) for n in order.get("names", [])]
        # Only the asset's own folder, and only its own attempts' files: a path with "..",
        # a relative one or one not named after the asset is refused whatever the daemon says.
        sound = (
            NAME.fullmatch(guid) is not None
            and work_dir.is_absolute()
            and ".." not in work_dir.parts
            and work_dir.name == guid
            and all(NAME.fullmatch(n) and (parse_name(n) or ("",))[0] == guid for n in names)
        )
        if not sound:
            self.log(f"not removing the files of {guid!r}: the daemon's request is malformed")
            return None
        try:
            _remove(Path(work_dir))
            for name in names:
                for suffix in FORGET_SUFFIXES:
                    _remove(self.state_dir / f"{name}{suffix}")
        except OSError as exc:
            self.log(f"removing the files of {guid} failed: {exc}; the next run tries again")
            return None
        self.log(f"{guid}: files removed (work folder and {len(names)} job(s))")
        return guid

    def _exit_file(self, name: str) -> str | None:
        """The first line of the job's exit file, if it has one (see the module docstring)."""
        if not NAME.fullmatch(name):
            return None
        try:
            with (self.state_dir / f"{name}.exit").open(
                encoding="utf-8", errors="replace"
            ) as handle:
                line = handle.readline(EXIT_FILE_MAX).strip()
        except OSError:
            return None
        return line or None

    def _write_script(self, name: str, text: str) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        target = self.state_dir / f"{name}.sh"
        temporary = self.state_dir / f".{name}.sh.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        temporary.replace(target)
        return target


def _remove(path: Path) -> None:
    """Remove a file, a link (never what it points to) or a folder tree; gone already is
    fine."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)


def _observed(guid: str, job: str, attempt: int, seen: Seen) -> dict[str, Any]:
    return {
        "asset_guid": guid,
        "job": job,
        "attempt": attempt,
        "hpc_job_id": seen.job_id,
        "state": seen.state,
        "exit_code": seen.exit_code,
        "reason": seen.reason,
    }


def run_agent(agent: Agent, *, loop_s: float | None, lock: Path) -> int:
    """Run once or in a loop under the state folder's lock; returns the exit code."""
    agent.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            agent.log("another agent run holds the lock; nothing to do")
            return exitcodes.OK
        while True:
            code = _cycle(agent)
            if loop_s is None:
                return code
            if code in (exitcodes.NOPERM, exitcodes.CONFIG):
                return code
            time.sleep(loop_s)


def _cycle(agent: Agent) -> int:
    try:
        counts = agent.run_once()
    except CallbackUndelivered as exc:
        agent.log(f"daemon unreachable: {exc.last_error}")
        return exitcodes.TEMPFAIL
    except CallbackRejected as exc:
        agent.log(f"daemon refused {exc.method} {exc.path}: {exc.detail}")
        return exitcodes.NOPERM if exc.auth else exitcodes.UNAVAILABLE
    except SchedulerFailed as exc:
        agent.log(str(exc))
        return exitcodes.TEMPFAIL
    except ConfigError as exc:
        agent.log(f"cannot run: {exc}")
        return exitcodes.CONFIG
    if any(counts.values()):
        agent.log(", ".join(f"{k} {v}" for k, v in counts.items()))
    return exitcodes.OK
