"""Settings, declared once.

Every setting is one ``Setting`` in ``SETTINGS``: name, type (of its default), default,
help, bound or choices, whether a client may override it as a limit, and which commands
take it as a flag. ``Settings``, its validation, the per-client ``Limits``, the CLI flags
and the docs table (checked by tests/test_docs.py) all derive from it. A setting is read
from the environment as ``PROFILEBASE_<NAME>`` (upper case); values are parsed strictly: a
bad value is an error that names the variable, never a silent default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from profilebase import business_hours
from profilebase.errors import ConfigError
from profilebase.models import LIMIT_SETTINGS, Bound, Limits, Setting

ENV_PREFIX = "PROFILEBASE_"
DEFAULT_DATABASE = "sqlite:///./profilebase-data/profilebase.db"
MB = 1024 * 1024
LIMIT = {s.name: s for s in LIMIT_SETTINGS}

#: Every setting, in the order the docs list them; the per-client limits are declared in
#: ``models.LIMIT_SETTINGS`` (the client uses ``Limits`` too) and take their places here.
SETTINGS: tuple[Setting, ...] = (
    Setting("host", "127.0.0.1", "Address the HTTP server listens on.", flags=("serve",)),
    Setting("port", 8080, "Port the HTTP server listens on.", flags=("serve",)),
    Setting(
        "database",
        DEFAULT_DATABASE,
        "Database URL: sqlite:///relative.db, sqlite:////absolute.db or postgresql://...",
        flags=("serve", "worker"),
    ),
    Setting(
        "database_timeout",
        5.0,
        "Seconds a request waits for the database (a pooled connection, SQLite's write lock) "
        "before it is answered 503 with Retry-After.",
        Bound.POSITIVE,
    ),
    Setting(
        "client_cache_seconds",
        1.0,
        "Seconds an HTTP process may keep using what it read of a client (enabled, token "
        "required, limits, organization id) before reading it again: a change made with "
        "`profilebase clients` applies within this bound; 0 reads the client on every request.",
        Bound.ZERO_OR_MORE,
    ),
    Setting(
        "fetch_cache_mb",
        16,
        "Megabytes of fetch replies an HTTP process keeps to send again while nothing at all "
        "was written to the database (the first commit anywhere forgets them); "
        "0 keeps none.",
        Bound.ZERO_OR_MORE,
    ),
    Setting(
        "client_timeout",
        30.0,
        "Seconds a connection may go without sending a byte while its request is incomplete; "
        "then it is closed (slow or abandoned uploads).",
        Bound.POSITIVE,
    ),
    Setting(
        "max_connections",
        1000,
        "Most HTTP connections one HTTP process serves at once; one more is answered 503 "
        "and closed.",
        Bound.POSITIVE,
    ),
    Setting(
        "forwarded_allow_ips",
        "",
        "Proxies whose X-Forwarded-For and X-Forwarded-Proto are believed: comma-separated "
        "addresses or networks, `*` for any; empty trusts none.",
    ),
    Setting(
        "processes",
        0,
        "HTTP processes `serve` runs on its one port (0: one per core, at most 8; 1: a single "
        "process with the batch workers as threads inside it); at most 64.",
        Bound.ZERO_OR_MORE,
        flags=("serve",),
    ),
    Setting(
        "workers",
        2,
        "Batch workers of `serve`: processes beside its HTTP processes, or threads inside it "
        "when it runs one (0: API only); at most 64.",
        Bound.ZERO_OR_MORE,
        flags=("serve",),
    ),
    Setting(
        "demo",
        True,
        "Create the `demo` client (authorization off) if missing.",
        flags=("serve",),
    ),
    Setting(
        "default_client",
        "demo",
        "Client of a request that names none (no client=, Host label or imsOrgId of a client); "
        "empty: such a request is refused.",
    ),
    Setting(
        "secret_file",
        "",
        "File of the server secret that tokens derive from, created on first start; empty: "
        "profilebase.secret beside the SQLite database (./profilebase-data/ for PostgreSQL).",
    ),
    Setting(
        "secret",
        "",
        "The server secret itself (32 or more characters), used instead of secret_file; every "
        "process of one database needs the same one.",
        secret=True,
    ),
    *(LIMIT[name] for name in ("max_batch_bytes", "max_batch_rows", "rows_per_day")),
    *(LIMIT[name] for name in ("max_profile_bytes", "max_update_url_bytes")),
    *(LIMIT[name] for name in ("max_update_body_bytes", "updates_per_day")),
    *(LIMIT[name] for name in ("max_delivery_bytes", "profile_expiry_days")),
    *(LIMIT[name] for name in ("bulk_requests_per_minute", "ingest_rows_per_second")),
    *(LIMIT[name] for name in ("business_hours", "token_ttl_seconds")),
    Setting(
        "legacy_token_ttl_seconds",
        21_599,
        "Lifetime of a token from the legacy /admin/rest/v1 endpoint (Target: 21599).",
        Bound.POSITIVE,
    ),
    Setting(
        "token_grace_seconds",
        0,
        "How long the previous token stays valid once a new one is created (0: revoked at once).",
        Bound.ZERO_OR_MORE,
    ),
    Setting(
        "auth_failures_per_minute",
        20,
        "Failed authentications one address may make per minute before it gets 429 (0: off).",
        Bound.ZERO_OR_MORE,
    ),
    Setting(
        "unit_rows",
        25_000,
        "Lines per work unit (a batch's first unit has half as many): a batch is cut into "
        "units that workers apply in parallel.",
        Bound.POSITIVE,
    ),
    Setting(
        "lease_seconds",
        30.0,
        "How long a worker owns a claimed unit before another worker may take it over.",
        Bound.POSITIVE,
    ),
    Setting(
        "stuck_after_seconds",
        900.0,
        "A batch with no progress for this long reports status `stuck` (and is retried).",
        Bound.POSITIVE,
    ),
    Setting(
        "status_retention_days",
        30.0,
        "Batch statuses (and failed-row reasons) are kept at least this many days.",
        Bound.POSITIVE,
    ),
    Setting(
        "sqlite_synchronous",
        "NORMAL",
        "SQLite `synchronous` pragma: NORMAL survives a process crash; FULL also a power loss.",
        choices=("OFF", "NORMAL", "FULL", "EXTRA"),
        any_case=True,
    ),
    Setting(
        "sqlite_writer_process",
        True,
        "SQLite: each HTTP process of `serve` hands its online writes (single updates, page "
        "calls, deletes) to a process of its own, so that they run on another core than its "
        "event loop; `false` runs them on a thread of the HTTP process.",
    ),
    Setting(
        "poll_interval",
        0.2,
        "Seconds an idle worker waits before looking for new work again.",
    ),
    Setting(
        "concurrency",
        1,
        "Worker processes `profilebase worker` runs (one per core is a good start); at most 64.",
        Bound.POSITIVE,
        flags=("worker",),
    ),
    Setting(
        "postgres_pool_size",
        10,
        "Most connections one process opens to PostgreSQL (unused with SQLite).",
        Bound.POSITIVE,
    ),
    Setting(
        "log_format",
        "text",
        "Log lines as `text` for people or `json` for machines.",
        choices=("text", "json"),
        flags=("serve", "worker"),
    ),
    Setting(
        "metrics_port",
        0,
        "Port on which `profilebase worker` serves its /metrics, on `host` (0: none).",
        flags=("worker",),
    ),
    Setting(
        "metrics_token",
        "",
        "If set, /metrics requires `Authorization: Bearer <metrics_token>`.",
        secret=True,
    ),
    Setting(
        "admin_password",
        "",
        "Password of the dashboard's admin login, which sees every client.",
        secret=True,
    ),
    Setting(
        "session_secret",
        "",
        "Key that signs dashboard logins (empty: a random one per process, so logins end when "
        "it restarts).",
        secret=True,
    ),
)

DECLARED = {s.name: s for s in SETTINGS}


def _default(name: str) -> Any:
    """The dataclass field of a declared setting: its default, its help, hidden if secret."""
    declared = DECLARED[name]
    return field(
        default=declared.default, repr=not declared.secret, metadata={"help": declared.help}
    )


@dataclass(frozen=True)
class Settings:
    """Server-wide settings, one attribute per declaration in ``SETTINGS`` (a test keeps the
    two in step; the attributes give the type checker the types). Per-client limits default
    to the same-named values."""

    host: str = _default("host")
    port: int = _default("port")
    database: str = _default("database")
    database_timeout: float = _default("database_timeout")
    client_cache_seconds: float = _default("client_cache_seconds")
    fetch_cache_mb: int = _default("fetch_cache_mb")
    client_timeout: float = _default("client_timeout")
    max_connections: int = _default("max_connections")
    forwarded_allow_ips: str = _default("forwarded_allow_ips")
    processes: int = _default("processes")
    workers: int = _default("workers")
    demo: bool = _default("demo")
    default_client: str = _default("default_client")
    secret_file: str = _default("secret_file")
    secret: str = _default("secret")
    max_batch_bytes: int = _default("max_batch_bytes")
    max_batch_rows: int = _default("max_batch_rows")
    rows_per_day: int = _default("rows_per_day")
    max_profile_bytes: int = _default("max_profile_bytes")
    max_update_url_bytes: int = _default("max_update_url_bytes")
    max_update_body_bytes: int = _default("max_update_body_bytes")
    updates_per_day: int = _default("updates_per_day")
    max_delivery_bytes: int = _default("max_delivery_bytes")
    profile_expiry_days: float = _default("profile_expiry_days")
    bulk_requests_per_minute: int = _default("bulk_requests_per_minute")
    ingest_rows_per_second: int = _default("ingest_rows_per_second")
    business_hours: str = _default("business_hours")
    token_ttl_seconds: int = _default("token_ttl_seconds")
    legacy_token_ttl_seconds: int = _default("legacy_token_ttl_seconds")
    token_grace_seconds: int = _default("token_grace_seconds")
    auth_failures_per_minute: int = _default("auth_failures_per_minute")
    unit_rows: int = _default("unit_rows")
    lease_seconds: float = _default("lease_seconds")
    stuck_after_seconds: float = _default("stuck_after_seconds")
    status_retention_days: float = _default("status_retention_days")
    sqlite_synchronous: str = _default("sqlite_synchronous")
    sqlite_writer_process: bool = _default("sqlite_writer_process")
    poll_interval: float = _default("poll_interval")
    concurrency: int = _default("concurrency")
    postgres_pool_size: int = _default("postgres_pool_size")
    log_format: str = _default("log_format")
    metrics_port: int = _default("metrics_port")
    metrics_token: str = _default("metrics_token")
    admin_password: str = _default("admin_password")
    session_secret: str = _default("session_secret")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from defaults, then ``PROFILEBASE_*`` variables, then ``overrides``.

        Overrides whose value is ``None`` are ignored, so CLI flags that were not given
        fall through to the environment.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for declared in SETTINGS:
            raw = environ.get(env_name(declared))
            if raw is not None:
                values[declared.name] = parse_value(declared, raw, env_name(declared))
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject values that cannot work, with a message that says which setting: first the
        declared bounds and choices, then the rules a declaration cannot state."""
        for declared in SETTINGS:
            declared.check(getattr(self, declared.name))
        if self.status_retention_days < 1:
            raise ConfigError(
                "Setting status_retention_days must be at least 1: the daily row quota "
                f"counts the batches of the last 24 hours, got {self.status_retention_days}."
            )
        for name in ("processes", "workers", "concurrency"):
            if getattr(self, name) > MAX_PROCESSES:
                raise ConfigError(
                    f"Setting {name} must be at most {MAX_PROCESSES}, got {getattr(self, name)}: "
                    "each is a process (or thread) with its own database connections; run more "
                    "servers or `profilebase worker` processes on other machines instead."
                )
        business_hours.parse(self.business_hours)
        trusted_proxies(self.forwarded_allow_ips)
        validate_observability(self)


#: Most HTTP processes ``processes = 0`` gives, however many cores the machine has.
MAX_DEFAULT_PROCESSES = 8
#: Most HTTP processes, batch workers or worker processes one command may start: a typo
#: (``--workers 2000``) must not start thousands of processes.
MAX_PROCESSES = 64


def http_processes(settings: Settings) -> int:
    """How many HTTP processes ``serve`` runs: ``processes``, or 0 for one per core this
    process may use (at most ``MAX_DEFAULT_PROCESSES``)."""
    if settings.processes:
        return settings.processes
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_DEFAULT_PROCESSES))


def env_name(declared: Setting) -> str:
    """The environment variable a setting is read from."""
    return ENV_PREFIX + declared.name.upper()


def validate_observability(settings: Settings) -> None:
    """Check the settings of logs, metrics and the dashboard."""
    if not 0 <= settings.metrics_port <= 65535:
        raise ConfigError(f"Setting metrics_port must be 0 to 65535, got {settings.metrics_port}.")
    for name, least in [("admin_password", 12), ("session_secret", 32), ("metrics_token", 16)]:
        value = getattr(settings, name)
        if value and (len(value) < least or value != value.strip()):
            raise ConfigError(
                f"Setting {name} must be empty or at least {least} characters without leading "
                "or trailing spaces; a long random one is best (e.g. `openssl rand -hex 24`)."
            )


def trusted_proxies(text: str) -> list[str]:
    """The entries of ``forwarded_allow_ips``: addresses, networks or ``*``; checked strictly."""
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"Setting forwarded_allow_ips holds {entry!r}, which is not an IP address or "
                "network: give the load balancer's addresses, e.g. 10.0.0.5,10.0.1.0/24."
            ) from None
    return entries


def parse_value(declared: Setting, raw: str, source: str) -> Any:
    """Parse one raw string for a declared setting; ``source`` names where it came from."""
    kind = declared.kind
    text = raw.strip()
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if kind is int:
            return int(text.replace("_", ""))
        if kind is float:
            return float(text)
    except ValueError:
        raise ConfigError(
            f"{source}={raw!r} is not a valid {kind.__name__}; see docs/configuration.md."
        ) from None
    return raw


#: The settings a client may override for itself (``clients set CODE --limit NAME=VALUE``).
LIMIT_NAMES = tuple(s.name for s in SETTINGS if s.limit)


def parse_limit(name: str, raw: str) -> int | float | str | None:
    """Parse and check one per-client limit given as text, strictly, like its setting.

    An empty value is None: the client goes back to the server-wide default.
    """
    if name not in LIMIT_NAMES:
        raise ConfigError(f"Unknown limit {name!r}; the limits are: {', '.join(LIMIT_NAMES)}.")
    if not raw.strip():
        return None
    value = parse_value(DECLARED[name], raw, f"limit {name}")
    dataclasses.replace(Settings(), **{name: value}).validate()
    return value


def client_limits(settings: Settings, overrides: Mapping[str, int | float | str]) -> Limits:
    """The limits in force for a client: server-wide defaults, then the client's overrides."""
    values = {}
    for name in LIMIT_NAMES:
        default = getattr(settings, name)
        values[name] = type(default)(overrides.get(name, default))
    return Limits(**values)
