"""The one Settings tree: a TOML file plus `DASSCOD_*` environment overrides.

Precedence, highest first: environment variables, the TOML file, the defaults below. Nested
fields are reached with a double underscore, e.g. `DASSCOD_MONGO__URI` or
`DASSCOD_LISTENER__PORT`. Secrets are `SecretStr`: printed masked, never logged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dasscod.ars.settings import ArsSettings
from dasscod.pipelines import BUILTIN_PIPELINES
from dasscod.secret_files import CredentialsSource, FileSecrets, read_secret_table
from dasscod.tokens import SigningKeys

ENV_PREFIX = "DASSCOD_"
ENV_NESTED_DELIMITER = "__"
CONFIG_ENV = "DASSCOD_CONFIG"


class _Section(FileSecrets):
    model_config = ConfigDict(extra="forbid")


class MongoSettings(_Section):
    #: A URI may carry a password, so it is a secret.
    uri: SecretStr = SecretStr("mongodb://127.0.0.1:27017")
    uri_file: Path | None = None
    database: str = "dasscod"
    #: Server selection and connecting: how long a request waits for an unreachable server.
    timeout_s: float = Field(default=10.0, gt=0)
    #: Client-side limit on one operation, retries included (PyMongo's timeoutMS).
    operation_timeout_s: float = Field(default=30.0, gt=0)


class ListenerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: The URL HPC jobs call back to (the listener as seen from the cluster). Defaults to
    #: http://host:port when unset.
    public_url: str | None = None
    #: HTTPS: the certificate chain and its private key (PEM). Without them the listener speaks
    #: plain HTTP (put a TLS-terminating reverse proxy in front of it, see the README).
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    #: Connections held at once (more are closed at once), how long a connection may take to
    #: send a request's headers, and how long an idle keep-alive connection is kept.
    max_connections: int = Field(default=1024, ge=1)
    header_timeout_s: float = Field(default=10.0, gt=0)
    idle_timeout_s: int = Field(default=5, ge=1)
    #: A request's body must arrive within `body_timeout_s` of its headers, plus one second
    #: for every `body_min_rate` bytes it has delivered (so a steady upload of any size at
    #: that rate or faster goes through, a trickle is cut off with 408).
    body_timeout_s: float = Field(default=10.0, gt=0)
    body_min_rate: int = Field(default=64 * 1024, ge=1, description="bytes per second")
    #: A client must take its answers: a connection whose answer could not be written for
    #: this long (the client stopped reading) is dropped.
    send_timeout_s: float = Field(default=10.0, gt=0)
    #: The interactive API pages (/docs, /redoc); the OpenAPI document is always served.
    docs: bool = False

    @model_validator(mode="after")
    def _tls_pair(self) -> ListenerSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("listener.tls_certfile and listener.tls_keyfile go together: "
                             "give both for HTTPS, or neither")
        for path in (self.tls_certfile, self.tls_keyfile):
            if path is not None and not path.is_file():
                raise ValueError(f"listener TLS file {path} does not exist")
        return self

    @property
    def callback_base(self) -> str:
        scheme = "https" if self.tls_certfile is not None else "http"
        base = self.public_url or f"{scheme}://{self.host}:{self.port}"
        return base.rstrip("/") + "/api/v1"


class SshSettings(_Section):
    """How to reach a cluster's login node. The host key must already be in `known_hosts`:
    nothing is trusted on first use."""

    host: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1)
    key_file: Path
    known_hosts: Path
    #: Commands at once on the one connection (sshd allows 10 sessions by default).
    max_channels: int = Field(default=8, ge=1, le=64)


class ClusterSettings(_Section):
    #: direct: a background process per job on the daemon's machine; slurm: sbatch/squeue;
    #: torque: qsub/qstat (Torque/PBS); pull: the daemon never reaches the cluster, an agent
    #: on its login node (`dassco-hpc agent`) takes claimed jobs from the listener, submits
    #: them and reports back.
    scheduler: Literal["direct", "slurm", "torque", "pull"] = "direct"
    #: local: commands run on the daemon's machine; ssh: on the login node in [ssh].
    transport: Literal["local", "ssh"] = "local"
    ssh: SshSettings | None = None
    #: Jobs of this daemon allowed at once on the cluster (starting, queued or running).
    max_jobs: int = Field(default=6, ge=1)
    #: Where per-asset work folders live on the cluster.
    work_root: Path = Path("var/cluster/work")
    #: Where the scheduler keeps its own job files (scripts, output, exit status).
    state_dir: Path = Path("var/cluster/jobs")
    #: Extra environment for every job (e.g. PATH or PYTHONPATH on the cluster).
    env: dict[str, str] = Field(default_factory=dict)
    #: The Python that runs `{python}` in job commands.
    python: str = "python3"
    #: Slurm: default partition and account, how finished jobs are looked up (sacct needs
    #: slurmdbd; `completion` reads the job-completion log), extra #SBATCH lines.
    partition: str | None = None
    account: str | None = None
    accounting: Literal["auto", "sacct", "completion", "none"] = "auto"
    sbatch_options: list[str] = Field(default_factory=list)
    #: Slurm, Torque: how long sbatch/qsub may take. A submission without an answer by then may
    #: still create its job, so the watcher keeps looking for it by name at least this long
    #: before the attempt counts as never submitted.
    submit_timeout_s: float = Field(default=120.0, gt=0)
    #: Torque: the queue (defaults to `partition`) and extra #PBS lines (e.g. "-W group_list=x").
    queue: str | None = None
    pbs_options: list[str] = Field(default_factory=list)
    #: Pull: the agent's bearer credential, the batch system it submits to (the script is
    #: rendered for it) and how long a job handed to the agent is held for it: if the agent
    #: has not reported the scheduler's job id by then, the job is handed out again (and the
    #: agent looks for it by name before submitting, so it never runs twice).
    agent_token: SecretStr | None = None
    agent_token_file: Path | None = None
    pull_submit: Literal["torque", "slurm"] = "torque"
    lease_s: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSettings:
        if self.scheduler == "pull":
            if self.agent_token is None or len(self.agent_token.get_secret_value()) < 16:
                raise ValueError("scheduler = 'pull' needs agent_token (at least 16 characters), "
                                 "the credential of the cluster's agent")
            if self.transport != "local":
                raise ValueError("a pull cluster is never reached by the daemon: leave "
                                 "transport = 'local' (the agent runs on the cluster)")
            for name in ("work_root", "state_dir"):
                if not getattr(self, name).is_absolute():
                    raise ValueError(f"{name} must be an absolute path on the cluster")
        if self.transport == "ssh":
            if self.ssh is None:
                raise ValueError("transport = 'ssh' needs an [ssh] section (host, user, "
                                 "key_file, known_hosts)")
            if self.scheduler == "direct":
                raise ValueError("the direct scheduler runs jobs on this machine: use "
                                 "transport = 'local', or scheduler 'slurm' or 'torque' over ssh")
            for name in ("work_root", "state_dir"):
                if not getattr(self, name).is_absolute():
                    raise ValueError(f"{name} must be an absolute path on the cluster")
        return self


class IntakeSettings(_Section):
    enabled: bool = True
    folder: Path = Path("var/intake")
    work_area: Path = Path("var/assets")
    quarantine: Path = Path("var/quarantine")
    #: A delivery is taken only when nothing in it changed for this long (a half-written
    #: folder must not be taken early). A `.ready` marker file makes it eligible at once.
    settle_s: float = Field(default=5.0, ge=0)
    poll_s: float = Field(default=2.0, gt=0)
    #: Bearer credential of the ingestion client for `POST /api/v1/assets`; unset, that
    #: endpoint is disabled and only the folder takes deliveries.
    api_token: SecretStr | None = None
    api_token_file: Path | None = None
    #: Largest delivery the intake API accepts, all files together.
    api_max_mb: float = Field(default=2000.0, gt=0)
    #: Uploads the intake API takes at once; one more gets 503 with Retry-After before its
    #: body is read. Each can hold about twice `api_max_mb` of disk while it is taken (its
    #: parts spooled, then the delivery staged), so this bounds the disk uploads use together.
    api_uploads_at_once: int = Field(default=4, ge=1)
    #: Largest folder delivery, all image files together, refused from the files' sizes
    #: before any is read (a 1 TB sparse file costs nothing to make and hours to checksum).
    max_delivery_mb: float = Field(default=10_000.0, gt=0)
    #: An asset in ERROR keeps its files (work area, cluster work folder, job state files)
    #: this long, for an operator to look at or retry; a DONE asset's go once ERDA has them.
    retention_days: float = Field(default=30.0, ge=0)


class ThrottleSettings(_Section):
    #: Assets on the HPC side at once (from the first job claimed to the last job settled).
    assets_in_flight: int = Field(default=30, ge=1)


class TimingSettings(_Section):
    #: Safety sweep of the dispatchers, for anything an event did not wake.
    sweep_s: float = Field(default=30.0, gt=0)
    #: Job-status watch interval per cluster.
    watch_s: float = Field(default=10.0, gt=0)
    #: Housekeeping interval (due retries, unresponsive jobs, timed pauses).
    housekeeping_s: float = Field(default=15.0, gt=0)
    retry_backoff_s: float = Field(default=30.0, ge=0)
    retry_backoff_max_s: float = Field(default=3600.0, ge=0)
    #: A job queued longer than this without starting is cancelled and retried.
    max_queue_s: float = Field(default=2000.0, gt=0)
    #: Extra time a running job gets beyond its own time limit before it is declared unresponsive.
    grace_s: float = Field(default=120.0, ge=0)
    #: Seconds the daemon has to stop after SIGTERM.
    shutdown_s: float = Field(default=10.0, gt=0)


class MetricsSettings(_Section):
    """`GET /metrics` (Prometheus text format)."""

    enabled: bool = True
    #: Serve the metrics on their own port (e.g. not exposed to the cluster network) instead
    #: of the listener's; None serves them on the listener.
    port: int | None = Field(default=None, ge=0, le=65535)
    host: str = "127.0.0.1"
    #: How often the store snapshot behind the asset and job gauges is refreshed.
    snapshot_s: float = Field(default=15.0, gt=0)


class AlertSettings(_Section):
    """The built-in notifier (for sites without Alertmanager): on when a webhook or an SMTP
    host is set. It checks the conditions of deploy/prometheus/dasscod-rules.yml."""

    #: A Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat): a secret.
    webhook_url: SecretStr | None = None
    webhook_url_file: Path | None = None
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    #: STARTTLS on a plain connection (port 587), or TLS from the start (`smtp_tls`, 465).
    smtp_starttls: bool = True
    smtp_tls: bool = False
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_password_file: Path | None = None
    mail_from: str = "dasscod@localhost"
    mail_to: list[str] = Field(default_factory=list)
    #: At most one message per condition per window; what happens meanwhile is digested.
    window_s: float = Field(default=900.0, gt=0)
    check_s: float = Field(default=15.0, gt=0)
    cluster_down_s: float = Field(default=600.0, ge=0)
    ars_down_s: float = Field(default=600.0, ge=0)
    restarts: int = Field(default=3, ge=1)
    no_progress_s: float = Field(default=1800.0, gt=0)
    disk_free_min: float = Field(default=0.10, ge=0, le=1)

    @property
    def enabled(self) -> bool:
        return self.webhook_url is not None or self.smtp_host is not None

    @model_validator(mode="after")
    def _mail_needs_recipients(self) -> AlertSettings:
        if self.smtp_host is not None and not self.mail_to:
            raise ValueError("alerts.smtp_host needs alerts.mail_to (the recipients)")
        return self


class LeaderSettings(_Section):
    #: The leader lease (docs/operations.md): a standby takes over at most this long after the
    #: leader died or lost MongoDB; the leader renews every quarter of it.
    lease_s: float = Field(default=15.0, ge=1)


class SecuritySettings(_Section):
    #: Signs each job's callback token. Give it as a systemd credential
    #: (`LoadCredential=security.token_secret:...`), a file (`token_secret_file`) or the
    #: environment (`DASSCOD_SECURITY__TOKEN_SECRET`), never in a shared file.
    token_secret: SecretStr | None = None
    token_secret_file: Path | None = None
    #: The key id written into each token's header. To rotate the secret: give the new
    #: secret a new id and move the old one into `previous_secrets` (id -> secret) until the
    #: jobs that hold tokens signed with it have ended (at most a job's time limit plus
    #: timing.max_queue_s plus timing.grace_s).
    token_kid: str = Field(default="k1", pattern=r"^[A-Za-z0-9._-]{1,32}$")
    previous_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    #: Upper bound of a token's lifetime; each token lives for its job's time limit plus
    #: timing.max_queue_s plus timing.grace_s, when that is shorter.
    token_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)

    @field_validator("token_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_secret_length(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _file_long_enough(self) -> SecuritySettings:
        # After the file mixin: a secret read from token_secret_file is checked too.
        if self.token_secret is not None and self.token_secret_file is not None:
            _check_secret_length(self.token_secret.get_secret_value())
        return self

    @model_validator(mode="after")
    def _previous_keys(self) -> SecuritySettings:
        if self.token_kid in self.previous_secrets:
            raise ValueError(f"security.previous_secrets holds the current token_kid "
                             f"{self.token_kid!r}: a rotated secret needs a new key id")
        for kid, secret in self.previous_secrets.items():
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,32}", kid):
                raise ValueError(f"security.previous_secrets: bad key id {kid!r}")
            _check_secret_length(secret.get_secret_value())
        return self

    def keys(self) -> SigningKeys:
        """The signing key and the previous ones that still verify."""
        return SigningKeys(self.token_kid, self.secret(),
                           {k: v.get_secret_value() for k, v in self.previous_secrets.items()})

    def secret(self) -> str:
        if self.token_secret is None:
            raise ConfigError(
                "security.token_secret is not set: set DASSCOD_SECURITY__TOKEN_SECRET "
                "or security.token_secret_file"
            )
        return self.token_secret.get_secret_value()


#: A control token's name: it is what the audit records as "who".
CONTROL_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.@-]{0,63}$"
MIN_CONTROL_TOKEN_LENGTH = 16


class ControlSettings(_Section):
    """The operators' control API (`/api/v1/control/`, the `dasscod` commands). Each admin
    token has a name, and every action is recorded under it. Without a token the API is off.

    `tokens` maps names to tokens (give them from the environment, e.g.
    `DASSCOD_CONTROL__TOKENS='{"alice": "..."}'`, never in a shared file); `tokens_file` names a
    TOML file of `name = "token"` lines readable only by the daemon (a systemd credential, for
    instance). Names from both are merged; a name in both is refused."""

    tokens: dict[str, SecretStr] = Field(default_factory=dict)
    tokens_file: Path | None = None

    @field_validator("tokens")
    @classmethod
    def _valid_tokens(cls, tokens: dict[str, SecretStr]) -> dict[str, SecretStr]:
        _check_control_tokens(tokens)
        return tokens

    @model_validator(mode="after")
    def _read_tokens_file(self) -> ControlSettings:
        if self.tokens_file is not None:
            from_file = _read_tokens_file(self.tokens_file)
            both = sorted(set(from_file) & set(self.tokens))
            if both:
                raise ValueError(f"control token name(s) {', '.join(both)} given both in "
                                 "tokens and in tokens_file: keep one")
            self.tokens = {**self.tokens, **from_file}
        seen: dict[str, str] = {}
        for name, token in self.tokens.items():
            other = seen.setdefault(token.get_secret_value(), name)
            if other != name:
                raise ValueError(f"control tokens of {other} and {name} are the same: give "
                                 "each operator a token of their own")
        return self

    def named(self) -> dict[str, str]:
        """name -> token, for the listener."""
        return {name: token.get_secret_value() for name, token in self.tokens.items()}


def _check_control_tokens(tokens: dict[str, SecretStr]) -> None:
    for name, token in tokens.items():
        if not re.fullmatch(CONTROL_NAME_PATTERN, name):
            raise ValueError(f"control token name {name!r}: use letters, digits and . _ @ - "
                             "(it is recorded as who did what)")
        if len(token.get_secret_value()) < MIN_CONTROL_TOKEN_LENGTH:
            raise ValueError(f"control token of {name} must be at least "
                             f"{MIN_CONTROL_TOKEN_LENGTH} characters (e.g. the output of "
                             "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)")


def _read_tokens_file(path: Path) -> dict[str, SecretStr]:
    data = read_secret_table(path, "control tokens_file")
    tokens = {name: SecretStr(value) for name, value in data.items()}
    _check_control_tokens(tokens)
    return tokens


class ArsSyncSettings(_Section):
    """How the ARS sync supervisor paces itself (used only when [ars] is set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)  # shared by the sync's parts

    #: Every step looks for work at least this often even without a wake-up.
    sweep_s: float = Field(default=30.0, gt=0)
    #: How often assets awaiting the (asynchronous) ERDA sync are asked about.
    confirm_poll_s: float = Field(default=2.0, gt=0)
    batch: int = Field(default=50, ge=1)
    #: ARS calls in flight at once, over all steps.
    concurrency: int = Field(default=16, ge=1)
    #: Share allocation = the asset's files in MB (rounded up) plus this.
    allocation_headroom_mb: int = Field(default=1, ge=0)
    #: An asset whose ARS call failed as unavailable is left alone this long.
    unavailable_backoff_s: float = Field(default=10.0, ge=0)
    max_erda_failures: int = Field(default=3, ge=1)
    #: Failures in a row that open the circuit breaker, and its probe interval while open:
    #: one probe call per cooldown. Kept short on purpose: a probe is one request, and the
    #: cooldown is how late the sync notices that ARS is back.
    breaker_threshold: int = Field(default=3, ge=1)
    breaker_cooldown_s: float = Field(default=2.0, gt=0)
    breaker_max_cooldown_s: float = Field(default=5.0, gt=0)
    #: An ERDA sync still not finished after this long is requested once more; after a second
    #: wait the files in ERDA are checked (all there: the share is closed and the asset
    #: completed in ARS; some missing: ERROR).
    erda_timeout_s: float = Field(default=900.0, gt=0)
    #: Assets whose ERDA sync is requested and not yet confirmed, at most.
    max_awaiting_erda: int = Field(default=12, ge=1)
    #: Open shares, at most this many MB in all, of originals, of derivatives.
    max_open_mb: int = Field(default=60_000, ge=1)
    max_open_original_mb: int = Field(default=20_000, ge=1)
    max_open_derivative_mb: int = Field(default=30_000, ge=1)


#: HS256 keys must be at least as long as the hash (RFC 7518, section 3.2).
MIN_SECRET_LENGTH = 32


def _check_secret_length(secret: str) -> None:
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"token_secret must be at least {MIN_SECRET_LENGTH} characters "
            "(e.g. the output of `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
    )

    mongo: MongoSettings = MongoSettings()
    listener: ListenerSettings = ListenerSettings()
    clusters: dict[str, ClusterSettings] = Field(
        default_factory=lambda: {"local": ClusterSettings()}
    )
    pipelines_dir: Path = BUILTIN_PIPELINES
    intake: IntakeSettings = IntakeSettings()
    throttle: ThrottleSettings = ThrottleSettings()
    timing: TimingSettings = TimingSettings()
    leader: LeaderSettings = LeaderSettings()
    security: SecuritySettings = SecuritySettings()
    control: ControlSettings = ControlSettings()
    metrics: MetricsSettings = MetricsSettings()
    alerts: AlertSettings = AlertSettings()
    #: ARS connection; None (the default) runs without ARS sync.
    ars: ArsSettings | None = None
    ars_sync: ArsSyncSettings = ArsSyncSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: "auto": JSON when stderr is not a terminal (systemd, files), readable lines otherwise.
    log_format: Literal["auto", "json", "console"] = "auto"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, CredentialsSource(settings_cls),
                TomlConfigSettingsSource(settings_cls))

    @model_validator(mode="after")
    def _control_tokens_are_their_own(self) -> Settings:
        """An admin token must not double as a credential of something less trusted."""
        others = {"intake.api_token": self.intake.api_token}
        others.update({f"clusters.{n}.agent_token": c.agent_token
                       for n, c in self.clusters.items()})
        for name, token in self.control.tokens.items():
            for where, other in others.items():
                if other is not None and other.get_secret_value() == token.get_secret_value():
                    raise ValueError(f"control token of {name} is also {where}: admin tokens "
                                     "must be separate from intake and agent credentials")
        return self


class ConfigError(ValueError):
    """The configuration is unusable; the message names the field and what is wrong."""


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Load the settings from `path` (or `$DASSCOD_CONFIG`), the environment and defaults."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    if path is not None and not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    try:
        return _FromFile(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc
    except ValueError as exc:  # e.g. invalid TOML
        raise ConfigError(f"{path}: {exc}") from exc


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = f"in {path}" if path else "in the environment"
    lines = [f"invalid configuration {where}:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        env = ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(p) for p in err["loc"]).upper()
        shown = "" if err["type"] == "extra_forbidden" else _shown_input(field, err.get("input"))
        lines.append(
            f"  {field}: {err['msg']}{shown}"
            f" (environment override: {env})"
        )
    return "\n".join(lines)


_SECRET_WORDS = ("secret", "uri", "password", "token")


def _shown_input(field: str, value: object) -> str:
    """Echo the offending value only when it is a plain scalar of a known, non-secret field
    (an unknown field may be a misspelt secret: its value is never shown)."""
    if any(word in field for word in _SECRET_WORDS) or not isinstance(value, str | int | float):
        return ""
    return f", got {value!r}"


MASK = "**********"
#: An environment variable whose name says it holds a credential.
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSW|PASSPHRASE|CREDENTIAL|PRIVATE|API_?KEY|AUTH|"
                          r"(^|_)KEY($|_)|(^|_)PW($|_)", re.IGNORECASE)
#: user:password@ in a URL (a database or proxy URL given to jobs).
_URL_PASSWORD = re.compile(r"(?<=://)[^/@\s]*:[^/@\s]*@")


def masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, secrets shown as '**********': every
    SecretStr, every cluster `env` value whose name looks secret, and passwords inside URLs."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    for cluster in data["clusters"].values():
        cluster["env"] = {name: masked_env_value(name, value)
                          for name, value in cluster["env"].items()}
    return data


def masked_env_value(name: str, value: str) -> str:
    if _SECRET_NAME.search(name):
        return MASK
    return _URL_PASSWORD.sub(MASK + "@", value)
