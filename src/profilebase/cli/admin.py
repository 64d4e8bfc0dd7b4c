"""Commands that manage the server's tenants in its database: clients and tokens."""

from __future__ import annotations

import json
from typing import Any

import click

from profilebase.cli.flags import database_option
from profilebase.cli.options import code_argument, json_option
from profilebase.cli.stores import opened


@click.group()
def clients() -> None:
    """Manage clients (tenants): credentials, authorization, limits.

    A running server sees every change within client_cache_seconds (1 s by default; 0: at
    its next request), its workers within seconds.
    """


@clients.command("create")
@code_argument
@click.option(
    "--require-auth", is_flag=True, help="Require an authorization token on profile API calls."
)
@json_option
@database_option
def clients_create(code: str, require_auth: bool, as_json: bool, database: str | None) -> None:
    """Create client CODE and print its API key and secret (shown this once only)."""
    from profilebase.models import now_ms
    from profilebase.server import clients as library

    with opened(database) as (_, store):
        client, credentials = library.create(store, code, require_auth, now_ms())
    if as_json:
        body = {
            "client": client.code,
            "apiKey": credentials.api_key,
            "secret": credentials.secret,
            "requireAuth": client.require_auth,
        }
        click.echo(json.dumps(body))
        return
    auth = "required" if client.require_auth else "not required"
    click.echo(f"Created client {client.code} (authorization {auth}).")
    print_credentials(credentials.api_key, credentials.secret)


@clients.command("new-secret")
@code_argument
@json_option
@database_option
def clients_new_secret(code: str, as_json: bool, database: str | None) -> None:
    """Give client CODE a new API key and secret; the old ones stop working at once."""
    from profilebase.server import clients as library

    with opened(database) as (_, store):
        client, credentials = library.new_secret(store, code)
    if as_json:
        body = {"client": client.code, "apiKey": credentials.api_key, "secret": credentials.secret}
        click.echo(json.dumps(body))
        return
    print_credentials(credentials.api_key, credentials.secret)


def print_credentials(api_key: str, secret: str) -> None:
    click.echo(f"API key: {api_key}")
    click.echo(f"Secret:  {secret}")
    click.echo("The secret is shown this once; only a hash of it is kept. Store it now.")


@clients.command("list")
@json_option
@database_option
def clients_list(as_json: bool, database: str | None) -> None:
    """List every client with its authorization, state and limit overrides."""
    with opened(database) as (_, store):
        found = store.list_clients()
    if as_json:
        click.echo(json.dumps([client_summary(c) for c in found]))
        return
    click.echo(f"{'CLIENT':<24} {'AUTH':<9} {'STATE':<9} {'API KEY':<33} LIMITS")
    for c in found:
        limits = " ".join(f"{k}={v}" for k, v in sorted(c.limits.items())) or "-"
        auth = "required" if c.require_auth else "off"
        state = "disabled" if c.disabled else "enabled"
        click.echo(f"{c.code:<24} {auth:<9} {state:<9} {c.api_key or '-':<33} {limits}")


@clients.command("show")
@code_argument
@json_option
@database_option
def clients_show(code: str, as_json: bool, database: str | None) -> None:
    """Show client CODE: authorization, its limits in force, usage and active token."""
    from profilebase.models import iso_ms, now_ms
    from profilebase.server import clients as library
    from profilebase.server.quota import DAY_MS
    from profilebase.server.settings import client_limits
    from profilebase.server.tokens import PROFILE_API

    now = now_ms()
    with opened(database) as (settings, store):
        client = library.get(store, code)
        token = store.active_token(client.id, PROFILE_API, now)
        rows = sum(size for _, size in store.recent_batches(client.id, now - DAY_MS))
    limits = client_limits(settings, client.limits)
    body = client_summary(client) | {
        "limits": {
            name: {"value": value, "override": name in client.limits}
            for name, value in vars(limits).items()
        },
        "rowsLast24h": rows,
        "activeToken": None
        if token is None
        else {
            "last4": token.last4,
            "createdAt": iso_ms(token.created_at),
            "expiresAt": iso_ms(token.expires_at),
        },
    }
    if as_json:
        click.echo(json.dumps(body))
        return
    click.echo(f"client:        {client.code}")
    click.echo(f"authorization: {'required' if client.require_auth else 'off'}")
    click.echo(f"state:         {'disabled' if client.disabled else 'enabled'}")
    click.echo(f"API key:       {client.api_key or '- (none: clients new-secret ' + code + ')'}")
    click.echo(f"organization:  {client.org_id or '-'}")
    if token is None:
        click.echo("token:         none active")
    else:
        click.echo(f"token:         ...{token.last4}, expires {iso_ms(token.expires_at)}")
    click.echo(f"rows, last 24 hours: {rows:,}")
    click.echo("limits:")
    for name, value in vars(limits).items():
        mark = " (client's own)" if name in client.limits else ""
        click.echo(f"  {name} = {value}{mark}")


def client_summary(client: Any) -> dict[str, Any]:
    return {
        "client": client.code,
        "requireAuth": client.require_auth,
        "disabled": client.disabled,
        "apiKey": client.api_key,
        "orgId": client.org_id,
        "limitOverrides": client.limits,
    }


@clients.command("set")
@code_argument
@click.option(
    "--require-auth/--no-require-auth",
    default=None,
    help="Require (or stop requiring) an authorization token on profile API calls.",
)
@click.option(
    "--limit",
    "limits",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override a limit for this client (repeatable); an empty VALUE restores the default.",
)
@click.option(
    "--org-id",
    default=None,
    metavar="ID@AdobeOrg",
    help="The client's Adobe organization id: a request naming no client but carrying this "
    "imsOrgId is for this client. An empty value removes it.",
)
@database_option
def clients_set(
    code: str,
    require_auth: bool | None,
    limits: tuple[str, ...],
    org_id: str | None,
    database: str | None,
) -> None:
    """Change client CODE's authorization requirement, limits and organization id."""
    from profilebase.server import clients as library

    pairs = {}
    for item in limits:
        name, equals, value = item.partition("=")
        if not equals:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE.", param_hint="--limit")
        pairs[name.strip()] = value
    with opened(database) as (_, store):
        client = library.change(store, code, require_auth=require_auth, limits=pairs, org_id=org_id)
    overrides = " ".join(f"{k}={v}" for k, v in sorted(client.limits.items())) or "none"
    auth = "required" if client.require_auth else "off"
    click.echo(
        f"Client {client.code}: authorization {auth}; limit overrides: {overrides}; "
        f"organization id: {client.org_id or 'none'}."
    )


@clients.command("disable")
@code_argument
@database_option
def clients_disable(code: str, database: str | None) -> None:
    """Disable client CODE: every call for it gets 403 (accepted batches still complete)."""
    set_disabled(code, database, True)


@clients.command("enable")
@code_argument
@database_option
def clients_enable(code: str, database: str | None) -> None:
    """Enable client CODE again after `clients disable`."""
    set_disabled(code, database, False)


def set_disabled(code: str, database: str | None, disabled: bool) -> None:
    from profilebase.server import clients as library

    with opened(database) as (_, store):
        library.change(store, code, disabled=disabled)
    click.echo(f"Client {code} is {'disabled' if disabled else 'enabled'}.")


@click.group()
def tokens() -> None:
    """Manage the profile API tokens of clients."""


@tokens.command("create")
@code_argument
@json_option
@database_option
def tokens_create(code: str, as_json: bool, database: str | None) -> None:
    """Create a profile API token for CODE, as the token endpoint does, and print it once."""
    from profilebase.models import iso_ms, now_ms
    from profilebase.server import clients as library
    from profilebase.server import secret as server_secret
    from profilebase.server import tokens as library_tokens
    from profilebase.server.settings import client_limits

    with opened(database) as (settings, store):
        client = library.get(store, code)
        ttl = client_limits(settings, client.limits).token_ttl_seconds
        secret = server_secret.open_secret(settings, store, now_ms())
        grace = settings.token_grace_seconds
        issued = library_tokens.issue(store, client, secret, ttl, grace, now_ms())
    if as_json:
        body = {
            "accessToken": issued.value,
            "tokenType": "bearer",
            "scope": issued.token.scope,
            "expiresIn": ttl,
        }
        click.echo(json.dumps(body))
        return
    click.echo(f"Token: {issued.value}")
    click.echo(
        f"Expires {iso_ms(issued.token.expires_at)}; GET on the token endpoint shows it again."
    )


@tokens.command("revoke")
@code_argument
@database_option
def tokens_revoke(code: str, database: str | None) -> None:
    """Revoke every token of client CODE at once."""
    from profilebase.models import now_ms
    from profilebase.server import clients as library
    from profilebase.server import tokens as library_tokens

    with opened(database) as (_, store):
        count = library_tokens.revoke(store, library.get(store, code), now_ms())
    click.echo(f"Revoked {count} token(s) of client {code}.")


COMMANDS = [clients, tokens]
