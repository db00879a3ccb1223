"""The operators' commands: `dasscod ls | show | errors | clusters | pause | resume | drain |
cancel | retry | ars-retry | limits | audit`, each a call to a running daemon's control API.

The daemon is found by `--url`, else `$DASSCOD_CONTROL_URL`, else the listener address in the
configuration file (`--config` or `$DASSCOD_CONFIG`), else http://127.0.0.1:8080. The admin
token comes from `--token-file`, else `$DASSCOD_CONTROL_TOKEN`, else the file named by
`$DASSCOD_CONTROL_TOKEN_FILE`. Output is a readable table, or the API's JSON with `--json`; a
refusal is one line saying what to do, and a non-zero exit status.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx

from dasscod.settings import CONFIG_ENV

PREFIX = "/api/v1/control"
DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 60.0

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Client:
    url: str
    token: str
    as_json: bool

    def call(self, method: str, path: str, *, params: dict[str, Any] | None = None,
             body: dict[str, Any] | None = None) -> Any:
        try:
            response = httpx.request(
                method, f"{self.url}{PREFIX}{path}", params=params, json=body,
                headers={"Authorization": f"Bearer {self.token}"}, timeout=TIMEOUT_S,
            )  # fmt: skip
        except httpx.TransportError as exc:
            raise click.ClickException(
                f"cannot reach the daemon at {self.url} ({exc.__class__.__name__}): is it "
                "running? Give its address with --url or --config"
            ) from exc
        if response.is_success:
            return response.json()
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        if isinstance(detail, list):  # FastAPI's validation errors
            detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}"
                               for d in detail)
        raise click.ClickException(f"{detail} (HTTP {response.status_code})")


def daemon_url(config: Path | None) -> str:
    """The listener's address from the configuration (host and port; a wildcard host is
    reached on the loopback)."""
    path = config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    listener: dict[str, Any] = {}
    if path is not None:
        try:
            listener = tomllib.loads(path.read_text(encoding="utf-8")).get("listener", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise click.ClickException(f"cannot read the daemon's address from {path}: {exc}; "
                                       "give it with --url") from exc
    host = os.environ.get("DASSCOD_LISTENER__HOST") or listener.get("host", "127.0.0.1")
    port = os.environ.get("DASSCOD_LISTENER__PORT") or listener.get("port", 8080)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in str(host):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def read_token(token_file: Path | None) -> str:
    file = token_file or (Path(os.environ["DASSCOD_CONTROL_TOKEN_FILE"])
                          if os.environ.get("DASSCOD_CONTROL_TOKEN_FILE") else None)
    if file is None and os.environ.get("DASSCOD_CONTROL_TOKEN"):
        return os.environ["DASSCOD_CONTROL_TOKEN"].strip()
    if file is None:
        raise click.ClickException("no admin token: give --token-file FILE, or set "
                                   "DASSCOD_CONTROL_TOKEN (one of the daemon's control.tokens)")
    try:
        token = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise click.ClickException(f"cannot read the token file {file}: {exc.strerror}") from exc
    if not token:
        raise click.ClickException(f"the token file {file} is empty")
    return token


def with_client(command: F) -> F:
    """The options every control command takes; passes a `client`."""

    @click.option("--json", "as_json", is_flag=True, help="The API's JSON instead of a table.")
    @click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False),
                  help="File holding the admin token (else $DASSCOD_CONTROL_TOKEN).")
    @click.option("--url", envvar="DASSCOD_CONTROL_URL",
                  help="The daemon's listener, e.g. http://127.0.0.1:8080.")
    @click.option("--config", type=click.Path(path_type=Path, dir_okay=False),
                  help="The daemon's configuration file, for its address.")
    @functools.wraps(command)
    def wrapper(*args: Any, config: Path | None, url: str | None, token_file: Path | None,
                as_json: bool, **kwargs: Any) -> Any:
        client = Client((url or daemon_url(config)).rstrip("/"), read_token(token_file),
                        as_json)
        return command(*args, client=client, **kwargs)

    return wrapper  # type: ignore[return-value]


def emit(client: Client, data: Any, readable: Callable[[Any], None]) -> None:
    if client.as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        readable(data)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def when(value: str | None) -> str:
    """An ISO time from the API as local, readable time."""
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


def seconds(text: str | None) -> float | None:
    if text is None:
        return None
    match = _DURATION.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration such as 90s, 15m, 2h or 3d")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * unit


def action_done(client: Client, result: dict[str, Any]) -> None:
    def readable(r: dict[str, Any]) -> None:
        mark = "" if r["changed"] else " (nothing changed)"
        click.echo(f"{r['target']}: {r['detail']}{mark}")
        for line in r.get("scheduler", []):
            click.echo(f"  {line}")

    emit(client, result, readable)


# --------------------------------------------------------------------------- commands


def register(main: click.Group) -> None:
    for command in (ls, show, errors, clusters, pause, resume, drain, cancel, retry, ars_retry,
                    limits, audit):
        main.add_command(command)


@click.command()
@click.option("--status", "statuses", multiple=True,
              help="Overall status (ERROR, RUNNING, DONE, CANCELLED, ...); repeatable.")
@click.option("--job", help="Assets at this job (running, waiting, failed there).")
@click.option("--pipeline", help="Assets of this pipeline.")
@click.option("--cluster", help="Assets with a job live on this cluster.")
@click.option("--paused", is_flag=True, help="Paused assets only.")
@click.option("--ars-error", is_flag=True,
              help="Only assets with an ARS flag in ERROR (the ARS sync gave them up).")
@click.option("--older-than", help="Created before this long ago (90s, 15m, 2h, 3d).")
@click.option("--newer-than", help="Created within this long.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--after", help="The cursor a previous page printed.")
@with_client
def ls(client: Client, statuses: tuple[str, ...], job: str | None, pipeline: str | None,
       cluster: str | None, paused: bool, ars_error: bool, older_than: str | None,
       newer_than: str | None, limit: int, after: str | None) -> None:
    """List assets, newest first."""
    params: dict[str, Any] = {"status": [s.upper() for s in statuses], "job": job,
                              "pipeline": pipeline, "cluster": cluster, "limit": limit,
                              "after": after, "older_than_s": seconds(older_than),
                              "newer_than_s": seconds(newer_than)}
    if paused:
        params["paused"] = "true"
    if ars_error:
        params["ars_error"] = "true"
    page = client.call("GET", "/assets", params={k: v for k, v in params.items()
                                                 if v is not None})

    def readable(p: dict[str, Any]) -> None:
        if not p["assets"]:
            click.echo("no assets match")
            return
        table(["GUID", "STATUS", "AT", "ON", "PAUSED", "CREATED", "ARS ERROR", "ERROR"],
              [[a["guid"], a["status"], a["at"], a["clusters"], a["paused"], when(a["created"]),
                a.get("ars_errors", []), (a["error"] or "")[:60] or None]
               for a in p["assets"]])
        if p["next"]:
            click.echo(f"more: dasscod ls ... --after {p['next']}")

    emit(client, page, readable)


@click.command()
@click.argument("guid")
@with_client
def show(client: Client, guid: str) -> None:
    """One asset: why it is where it is (timeline, attempts, errors, output, ARS state)."""
    emit(client, client.call("GET", f"/assets/{guid}"), _show_timeline)


def _show_timeline(t: dict[str, Any]) -> None:
    paused = "  (paused)" if t["paused"] else ""
    click.echo(f"{t['guid']}  {t['pipeline']}  {t['status']}{paused}  created "
               f"{when(t['created'])}")
    failed = t["failed_job"]
    if failed:
        job = next(j for j in t["jobs"] if j["name"] == failed)
        click.echo(f"\nFAILED at {failed} after {job['attempt']} attempt(s): "
                   f"{job['last_error'] or 'no error recorded'}")
        if job["output"]:
            click.echo("  output: " + "  ".join(job["output"]))
        click.echo(f"  to retry: dasscod retry {t['guid']} {failed}")
    click.echo("\nJOBS")
    table(["JOB", "STATUS", "ATTEMPT", "CLUSTER", "SCHEDULER ID", "CLAIMED", "ENDED", "ERROR"],
          [[j["name"], _attempt_status(j, a), f"{a['attempt']}/{j['max_attempts']}",
            a["cluster"], a["hpc_job_id"], when(a["claimed"]), when(a["ended"]),
            (a["error"] or "")[:70] or None]
           for j in t["jobs"] for a in (j["attempts"] or [_never(j)])])
    click.echo("\nTIMELINE")
    for h in t["history"]:
        who = f" by {h['by']}" if h.get("by") else ""
        why = f" ({h['reason']})" if h.get("reason") else ""
        what = f"{h['job']}#{h['attempt']}" if h["job"] else (h.get("field") or "asset")
        click.echo(f"  {when(h['at'])}  {what:<24} {h['from_']} -> {h['to']}  "
                   f"{h['cause']}{who}{why}")
    ars = t["ars"]
    click.echo("\nARS  " + "  ".join(f"{k}={v}" for k, v in ars.items() if v not in (None, 0)))
    if "ERROR" in ars.values():
        click.echo(f"  once what ARS refused is fixed: dasscod ars-retry {t['guid']}")
    if t["files"]:
        click.echo("FILES  " + ", ".join(f"{f['name']} ({f['size_mb']:.2f} MB)"
                                         for f in t["files"]))
    if t.get("files_left_on"):
        click.echo("FILES LEFT ON  " + ", ".join(t["files_left_on"])
                   + "  (pull clusters: their agents remove them at their next runs)")
    metadata = t.get("metadata") or {}
    if metadata:
        keys = ("barcode", "asset_subject", "institution", "collection", "digitiser")
        click.echo("METADATA  " + "  ".join(f"{k}={metadata[k]}" for k in keys
                                            if metadata.get(k)))


def _never(job: dict[str, Any]) -> dict[str, Any]:
    """The row of a job that never ran."""
    return {"attempt": 0, "cluster": None, "hpc_job_id": None, "claimed": None, "ended": None,
            "error": job["last_error"], "outcome": None}


def _attempt_status(job: dict[str, Any], attempt: dict[str, Any]) -> str:
    """An earlier attempt shows how it ended; the current one the job's status."""
    current = attempt["attempt"] == job["attempt"]
    return str(job["status"] if current else attempt["outcome"] or "-")


@click.command()
@with_client
def errors(client: Client) -> None:
    """Assets in ERROR, grouped by job and reason."""

    def readable(groups: list[dict[str, Any]]) -> None:
        if not groups:
            click.echo("no asset is in ERROR")
            return
        table(["COUNT", "JOB", "REASON", "ASSETS"],
              [[g["count"], g["job"], g["reason"][:80], g["assets"]] for g in groups])

    emit(client, client.call("GET", "/errors"), readable)


@click.command()
@with_client
def clusters(client: Client) -> None:
    """Clusters: limits, live jobs, reachability, pauses."""

    def readable(rows: list[dict[str, Any]]) -> None:
        table(["CLUSTER", "SCHEDULER", "LIVE", "MAX JOBS", "REACHABLE", "PAUSED",
               "FILES TO REMOVE"],
              [[c["name"], c["scheduler"], c["live_jobs"],
                f"{c['max_jobs']}" + ("" if c["max_jobs"] == c["configured_max_jobs"]
                                      else f" (configured {c['configured_max_jobs']})"),
                "yes" if c["reachable"] else f"no (retry in {c['retry_in_s']} s)",
                f"by {c['paused']['by']}" if c["paused"] else "no",
                f"{c['files_to_remove']} asset(s), by its agent" if c["scheduler"] == "pull"
                else "-"] for c in rows])

    emit(client, client.call("GET", "/clusters"), readable)


KINDS = click.Choice(["asset", "pipeline", "cluster", "intake"])


@click.command()
@click.argument("kind", type=KINDS)
@click.argument("name", required=False)
@click.option("--reason", help="Why (recorded in the audit).")
@with_client
def pause(client: Client, kind: str, name: str | None, reason: str | None) -> None:
    """Pause an asset, a pipeline, a cluster, or intake: what runs finishes, nothing new
    starts there."""
    action_done(client, client.call("POST", "/pause",
                                    body={"kind": kind, "name": name, "reason": reason}))


@click.command()
@click.argument("kind", type=KINDS)
@click.argument("name", required=False)
@click.option("--reason", help="Why (recorded in the audit).")
@with_client
def resume(client: Client, kind: str, name: str | None, reason: str | None) -> None:
    """Resume what `pause` paused."""
    action_done(client, client.call("POST", "/resume",
                                    body={"kind": kind, "name": name, "reason": reason}))


@click.command()
@click.option("--off", is_flag=True, help="End the drain: take new work again.")
@click.option("--wait", is_flag=True, help="Wait until no asset is in flight.")
@click.option("--reason", help="Why (recorded in the audit).")
@with_client
def drain(client: Client, off: bool, wait: bool, reason: str | None) -> None:
    """Stop taking new work (intake, assets not started) and let what is in flight finish."""
    action_done(client, client.call("POST", "/drain", body={"on": not off, "reason": reason}))
    while wait and not off:
        state = client.call("GET", "/state")
        if state["assets_in_flight"] == 0:
            if not client.as_json:
                click.echo("drained: no asset in flight")
            return
        time.sleep(1.0)  # an operator's wait, not the daemon's hot path


@click.command()
@click.argument("guid")
@click.option("--reason", help="Why (recorded in the asset's history and the audit).")
@with_client
def cancel(client: Client, guid: str, reason: str | None) -> None:
    """Cancel an asset: its live job is cancelled on the scheduler and every unfinished job
    ends CANCELLED."""
    action_done(client, client.call("POST", f"/assets/{guid}/cancel", body={"reason": reason}))


@click.command()
@click.argument("guid")
@click.argument("job", required=False)
@click.option("--from", "from_job", metavar="JOB", help="Run JOB and every later job again.")
@click.option("--reason", help="Why (recorded in the asset's history and the audit).")
@with_client
def retry(client: Client, guid: str, job: str | None, from_job: str | None,
          reason: str | None) -> None:
    """Retry a job in ERROR or FAILED (no JOB: every job in ERROR), or run the asset again
    from a job with --from."""
    action_done(client, client.call("POST", f"/assets/{guid}/retry",
                                    body={"job": job, "from_job": from_job, "reason": reason}))


ARS_FLAGS = click.Choice(["is_in_ars", "has_new_file", "has_open_share", "erda_sync",
                          "update_metadata"])


@click.command("ars-retry")
@click.argument("guid")
@click.argument("flag", type=ARS_FLAGS, required=False)
@click.option("--reason", help="Why (recorded in the asset's history and the audit).")
@with_client
def ars_retry(client: Client, guid: str, flag: str | None, reason: str | None) -> None:
    """Reset an ARS flag left in ERROR (no FLAG: every one) once what ARS refused is fixed;
    the ARS sync retries the asset at once. `dasscod ls --ars-error` lists such assets."""
    action_done(client, client.call("POST", f"/assets/{guid}/ars-retry",
                                    body={"flag": flag, "reason": reason}))


@click.command()
@click.option("--assets-in-flight", type=click.IntRange(1), help="New assets-in-flight limit.")
@click.option("--cluster", help="The cluster whose --max-jobs to change.")
@click.option("--max-jobs", type=click.IntRange(1), help="New limit of jobs on --cluster.")
@click.option("--reset", is_flag=True, help="Back to the configured limit (with --cluster, "
              "that cluster's; else assets in flight).")
@click.option("--reason", help="Why (recorded in the audit).")
@with_client
def limits(client: Client, assets_in_flight: int | None, cluster: str | None,
           max_jobs: int | None, reset: bool, reason: str | None) -> None:
    """Show the limits, or change one at run time (kept across restarts until --reset)."""
    changes: list[tuple[str, int | None]] = []
    if assets_in_flight is not None or (reset and cluster is None):
        changes.append(("assets_in_flight", None if reset else assets_in_flight))
    if cluster is not None:
        if max_jobs is None and not reset:
            raise click.UsageError("--cluster needs --max-jobs N (or --reset)")
        changes.append((f"cluster:{cluster}", None if reset else max_jobs))
    elif max_jobs is not None:
        raise click.UsageError("--max-jobs needs --cluster NAME")
    for target, value in changes:
        action_done(client, client.call("POST", "/limits",
                                        body={"target": target, "value": value,
                                              "reason": reason}))
    if changes:
        return

    def readable(rows: list[dict[str, Any]]) -> None:
        table(["LIMIT", "VALUE", "CONFIGURED", "IN USE", "SET BY"],
              [[r["target"], r["limit"], r["configured"], r["in_use"],
                f"{r['set']['by']} {when(r['set']['at'])}" if r["set"] else None]
               for r in rows])

    emit(client, client.call("GET", "/limits"), readable)


@click.command()
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--by", help="Only this operator's actions (the token's name).")
@click.option("--asset", help="Only actions on this asset.")
@click.option("--target", help="Only actions on this target (cluster:NAME, intake, ...).")
@with_client
def audit(client: Client, limit: int, by: str | None, asset: str | None,
          target: str | None) -> None:
    """Operators' actions, newest first: who, when, what, why, and what came of it."""
    params: dict[str, Any] = {"limit": limit, "by": by,
                              "target": f"asset:{asset}" if asset else target}
    records = client.call("GET", "/audit", params={k: v for k, v in params.items()
                                                   if v is not None})

    def readable(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo("no actions recorded")
            return
        table(["AT", "BY", "ACTION", "TARGET", "REASON", "OUTCOME"],
              [[when(r["at"]), r["by"], r["action"], r["target"], r["reason"],
                r["outcome"][:80]] for r in rows])

    emit(client, records, readable)
