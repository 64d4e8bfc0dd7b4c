"""Settings, declared once.

Every setting has a name, a type, a default and a help text in ``SETTINGS``.
It is read from the environment as ``PROFILEBASE_<NAME>`` (upper case) and the
CLI exposes the serving ones as flags. Values are parsed strictly: a bad value
is an error that names the variable, never a silent default.
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
from profilebase.models import Limits

ENV_PREFIX = "PROFILEBASE_"
DEFAULT_DATABASE = "sqlite:///./profilebase-data/profilebase.db"
MB = 1024 * 1024


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    """Server-wide settings. Per-client limits default to the ``max_*``/``*_per_day`` values."""

    host: str = _setting("127.0.0.1", "Address the HTTP server listens on.")
    port: int = _setting(8080, "Port the HTTP server listens on.")
    database: str = _setting(
        DEFAULT_DATABASE,
        "Database URL: sqlite:///relative.db, sqlite:////absolute.db or postgresql://...",
    )
    database_timeout: float = _setting(
        5.0,
        "Seconds a request waits for the database (a pooled connection, SQLite's write lock) "
        "before it is answered 503 with Retry-After.",
    )
    client_timeout: float = _setting(
        30.0,
        "Seconds a connection may go without sending a byte while its request is incomplete; "
        "then it is closed (slow or abandoned uploads).",
    )
    max_connections: int = _setting(
        1000, "Most HTTP connections served at once; one more is answered 503 and closed."
    )
    forwarded_allow_ips: str = _setting(
        "",
        "Proxies whose X-Forwarded-For and X-Forwarded-Proto are believed: comma-separated "
        "addresses or networks, `*` for any; empty trusts none.",
    )
    workers: int = _setting(2, "Batch worker threads inside `serve` (0: API only).")
    demo: bool = _setting(True, "Create the `demo` client (authorization off) if missing.")
    default_client: str = _setting(
        "demo",
        "Client of a request that names none (no client=, Host label or imsOrgId of a client); "
        "empty: such a request is refused.",
    )
    secret_file: str = _setting(
        "",
        "File of the server secret that tokens derive from, created on first start; empty: "
        "profilebase.secret beside the SQLite database (./profilebase-data/ for PostgreSQL).",
    )
    secret: str = field(
        default="",
        repr=False,
        metadata={
            "help": "The server secret itself (32 or more characters), used instead of "
            "secret_file; every process of one database needs the same one."
        },
    )
    max_batch_bytes: int = _setting(
        50 * MB, "A batch body must be smaller than this many bytes (Target: < 50 MB)."
    )
    max_batch_rows: int = _setting(500_000, "Most data rows in one batch (Target: 500,000).")
    rows_per_day: int = _setting(
        1_000_000, "Most batch rows a client may submit in any rolling 24 hours."
    )
    max_profile_bytes: int = _setting(
        2000 * 1024, "Largest stored size of one profile; a row that would exceed it fails."
    )
    max_update_url_bytes: int = _setting(
        8 * 1024, "Longest request line of a GET single profile update (Target: 8 KB)."
    )
    max_update_body_bytes: int = _setting(
        60 * 1024,
        "Largest body (plus query string) of a POST single profile update (Target: 60 KB).",
    )
    updates_per_day: int = _setting(
        1_000_000, "Most single profile updates a client may make in any rolling 24 hours."
    )
    max_delivery_bytes: int = _setting(
        60 * MB, "Largest body of a Delivery API call (Target: 60 MB)."
    )
    profile_expiry_days: float = _setting(
        0.0,
        "A profile with no activity for this many days expires and is deleted (Target: 14); "
        "0 keeps profiles for ever.",
    )
    bulk_requests_per_minute: int = _setting(
        0, "Most batches a client may submit in any 60 seconds (0: no limit; Target: 50)."
    )
    ingest_rows_per_second: int = _setting(
        0, "Rows per second the workers apply for one client during business_hours (0: no limit)."
    )
    business_hours: str = _setting(
        "mon-fri 09:00-18:00 UTC",
        "When ingest_rows_per_second applies: `always` or `[days] HH:MM-HH:MM [time zone]`.",
    )
    token_ttl_seconds: int = _setting(
        7_775_999, "Lifetime of a token from the token endpoint (Target: 7775999, about 90 days)."
    )
    legacy_token_ttl_seconds: int = _setting(
        21_599, "Lifetime of a token from the legacy /admin/rest/v1 endpoint (Target: 21599)."
    )
    token_grace_seconds: int = _setting(
        0, "How long the previous token stays valid once a new one is created (0: revoked at once)."
    )
    auth_failures_per_minute: int = _setting(
        20, "Failed authentications one address may make per minute before it gets 429 (0: off)."
    )
    unit_rows: int = _setting(
        25_000, "Lines per work unit: a batch is cut into units that workers apply in parallel."
    )
    lease_seconds: float = _setting(
        30.0, "How long a worker owns a claimed unit before another worker may take it over."
    )
    stuck_after_seconds: float = _setting(
        900.0, "A batch with no progress for this long reports status `stuck` (and is retried)."
    )
    status_retention_days: float = _setting(
        30.0, "Batch statuses (and failed-row reasons) are kept at least this many days."
    )
    sqlite_synchronous: str = _setting(
        "NORMAL",
        "SQLite `synchronous` pragma: NORMAL survives a process crash; FULL also a power loss.",
    )
    poll_interval: float = _setting(
        0.2, "Seconds an idle worker waits before looking for new work again."
    )
    concurrency: int = _setting(
        1, "Worker processes `profilebase worker` runs (one per core is a good start)."
    )
    postgres_pool_size: int = _setting(
        10, "Most connections one process opens to PostgreSQL (unused with SQLite)."
    )
    log_format: str = _setting("text", "Log lines as `text` for people or `json` for machines.")
    metrics_port: int = _setting(
        0, "Port on which `profilebase worker` serves its /metrics, on `host` (0: none)."
    )
    metrics_token: str = field(
        default="",
        repr=False,
        metadata={"help": "If set, /metrics requires `Authorization: Bearer <metrics_token>`."},
    )
    admin_password: str = field(
        default="",
        repr=False,
        metadata={"help": "Password of the dashboard's admin login, which sees every client."},
    )
    session_secret: str = field(
        default="",
        repr=False,
        metadata={
            "help": "Key that signs dashboard logins (empty: a random one per process, "
            "so logins end when it restarts)."
        },
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from defaults, then ``PROFILEBASE_*`` variables, then ``overrides``.

        Overrides whose value is ``None`` are ignored, so CLI flags that were not given
        fall through to the environment.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = parse_value(f, raw, ENV_PREFIX + f.name.upper())
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject values that cannot work, with a message that says which setting."""
        positive = [
            "max_batch_bytes",
            "max_batch_rows",
            "rows_per_day",
            "max_profile_bytes",
            "max_update_url_bytes",
            "max_update_body_bytes",
            "updates_per_day",
            "max_delivery_bytes",
            "token_ttl_seconds",
            "legacy_token_ttl_seconds",
            "unit_rows",
            "lease_seconds",
            "stuck_after_seconds",
            "status_retention_days",
            "concurrency",
            "postgres_pool_size",
            "database_timeout",
            "client_timeout",
            "max_connections",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"Setting {name} must be positive, got {getattr(self, name)}.")
        if self.status_retention_days < 1:
            raise ConfigError(
                "Setting status_retention_days must be at least 1: the daily row quota "
                f"counts the batches of the last 24 hours, got {self.status_retention_days}."
            )
        if self.profile_expiry_days < 0:
            raise ConfigError(
                "Setting profile_expiry_days must be 0 (off) or more, "
                f"got {self.profile_expiry_days}."
            )
        zero_or_more = [
            "workers",
            "bulk_requests_per_minute",
            "ingest_rows_per_second",
            "token_grace_seconds",
            "auth_failures_per_minute",
        ]
        for name in zero_or_more:
            if getattr(self, name) < 0:
                raise ConfigError(f"Setting {name} must be 0 or more, got {getattr(self, name)}.")
        business_hours.parse(self.business_hours)
        trusted_proxies(self.forwarded_allow_ips)
        if self.sqlite_synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ConfigError(
                "Setting sqlite_synchronous must be one of OFF, NORMAL, FULL, EXTRA, "
                f"got {self.sqlite_synchronous!r}."
            )
        validate_observability(self)


def validate_observability(settings: Settings) -> None:
    """Check the settings of logs, metrics and the dashboard."""
    if settings.log_format not in ("text", "json"):
        raise ConfigError(f"Setting log_format must be text or json, got {settings.log_format!r}.")
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


def parse_value(f: dataclasses.Field[Any], raw: str, source: str) -> Any:
    """Parse one raw string for field ``f``; ``source`` names where it came from."""
    kind = (
        f.type
        if isinstance(f.type, type)
        else {"int": int, "float": float, "bool": bool}.get(str(f.type), str)
    )
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


def setting_fields() -> list[dataclasses.Field[Any]]:
    """All settings, in declaration order (used by the CLI and the docs test)."""
    return list(dataclasses.fields(Settings))


#: The settings a client may override for itself (``clients set CODE --limit NAME=VALUE``).
LIMIT_NAMES = tuple(f.name for f in dataclasses.fields(Limits))


def parse_limit(name: str, raw: str) -> int | float | str | None:
    """Parse and check one per-client limit given as text, strictly, like its setting.

    An empty value is None: the client goes back to the server-wide default.
    """
    if name not in LIMIT_NAMES:
        raise ConfigError(f"Unknown limit {name!r}; the limits are: {', '.join(LIMIT_NAMES)}.")
    if not raw.strip():
        return None
    field_ = next(f for f in dataclasses.fields(Settings) if f.name == name)
    value = parse_value(field_, raw, f"limit {name}")
    dataclasses.replace(Settings(), **{name: value}).validate()
    return value


def client_limits(settings: Settings, overrides: Mapping[str, int | float | str]) -> Limits:
    """The limits in force for a client: server-wide defaults, then the client's overrides."""
    values = {}
    for f in dataclasses.fields(Limits):
        default = getattr(settings, f.name)
        values[f.name] = type(default)(overrides.get(f.name, default))
    return Limits(**values)
