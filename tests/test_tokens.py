"""The token endpoints: Basic key:secret in, Target-shaped tokens out; the database keeps
hashes and nonces, the server secret (outside it) derives the values again."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest import FakeClock
from helpers import TEST_SECRET

from profilebase.cli import main
from profilebase.errors import ConfigError
from profilebase.models import from_ms, now_ms
from profilebase.server import clients, tokens
from profilebase.server import secret as server_secret
from profilebase.server.settings import Settings
from profilebase.server.storage import Store, sqlite_path

TOKEN = "/acme/target/authentication/token"
LEGACY = "/admin/rest/v1/authentication/token"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database=database_url, workers=0, token_grace_seconds=30)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(now_ms())


@pytest.fixture
def acme(store: Store) -> clients.Credentials:
    return clients.create(store, "acme", True, now_ms())[1]


def fetch(http: httpx.Client, token: str) -> int:
    """Status of a profile fetch for acme with this token (404: authorized, no such profile)."""
    response = http.get(
        "/rest/v1/profiles/p1",
        params={"client": "acme"},
        headers={"Authorization": f"Bearer {token}"},
    )
    return response.status_code


@pytest.mark.parametrize("scope_parameter", ["authorizationScope", "scope"])
def test_post_creates_a_token_in_targets_shape(
    http: httpx.Client, acme: clients.Credentials, scope_parameter: str
):
    response = http.post(
        TOKEN, params={scope_parameter: "profile_api"}, auth=(acme.api_key, acme.secret)
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"accessToken", "tokenType", "scope", "expiresIn"}
    assert body["tokenType"] == "bearer" and body["scope"] == "profile_api"
    assert body["expiresIn"] == 7775999
    assert len(body["accessToken"]) >= 43  # 256 random bits, URL-safe base64
    assert response.headers["cache-control"] == "no-store"
    assert fetch(http, body["accessToken"]) == 404


def test_get_returns_the_active_token(
    http: httpx.Client, acme: clients.Credentials, clock: FakeClock
):
    """GET answers as Target documents it, "Retrieve an existing authorization token": the
    token itself with the seconds it has left; 404 with a clear message when there is none."""
    auth = (acme.api_key, acme.secret)
    params = {"authorizationScope": "profile_api"}
    none = http.get(TOKEN, params=params, auth=auth)
    assert none.status_code == 404
    assert none.json()["message"] == (
        "Client 'acme' has no active profile_api token; create one with POST on this URL "
        "(with the same credentials)."
    )
    value = http.post(TOKEN, params=params, auth=auth).json()["accessToken"]
    clock.advance(100)
    response = http.get(TOKEN, params=params, auth=auth)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "accessToken": value,
        "tokenType": "bearer",
        "scope": "profile_api",
        "expiresIn": 7775999 - 100,
    }
    assert fetch(http, response.json()["accessToken"]) == 404  # authorized
    assert http.get(TOKEN, params=params, auth=(acme.api_key, "wrong")).status_code == 401


def test_get_says_so_of_a_token_made_before_tokens_could_be_shown(
    http: httpx.Client, acme: clients.Credentials, store: Store, clock: FakeClock
):
    """A token stored as its hash only (no nonce: made before this release) keeps working,
    and GET says it cannot be shown instead of returning something else."""
    client = clients.get(store, "acme")
    # Times from the server's clock: a revocation it sees as past, a token made after it.
    issued = tokens.issue(store, client, TEST_SECRET, 3600, 0, clock())
    clock.advance(1)
    store.revoke_tokens(client.id, clock())
    clock.advance(1)
    old = dataclasses.replace(
        issued.token, token_hash=tokens.token_hash("old"), nonce=None, created_at=from_ms(clock())
    )
    store.create_token(old, clock() + 3_600_000)
    assert fetch(http, "old") == 404  # still authorized
    response = http.get(TOKEN, params={"scope": "profile_api"}, auth=(acme.api_key, acme.secret))
    assert response.status_code == 404
    assert "was made before this server could show tokens again" in response.json()["message"]


def test_the_database_alone_reveals_no_token(
    http: httpx.Client, acme: clients.Credentials, settings: Settings
):
    """Neither the token nor the server secret is in the database; the secret is in its own
    file, beside the SQLite database by default, readable by its owner only."""
    value = http.post(
        TOKEN, params={"scope": "profile_api"}, auth=(acme.api_key, acme.secret)
    ).json()["accessToken"]
    dump = database_text(settings.database)
    secret = server_secret.load(settings)
    assert value not in dump and acme.secret not in dump
    assert secret.key.decode() not in dump and secret.fingerprint in dump
    assert acme.api_key in dump and "scrypt$" in dump
    path = server_secret.secret_path(settings)
    if settings.database.startswith("sqlite"):
        assert path.parent == Path(sqlite_path(settings.database)).parent
    assert path.stat().st_mode & 0o077 == 0


def database_text(url: str) -> str:
    """Every row of every table, as text, on either backend."""
    if url.startswith("sqlite"):
        return "\n".join(sqlite3.connect(sqlite_path(url)).iterdump())
    import psycopg

    with psycopg.connect(url) as pg:
        tables = pg.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
        return "\n".join(
            str(row) for (table,) in tables for row in pg.execute(f'SELECT * FROM "{table}"')
        )


@pytest.mark.parametrize(
    "auth",
    [None, ("wrong", "wrong"), "right key, wrong secret", "other client's credentials"],
)
def test_wrong_or_missing_basic_credentials_are_401(
    http: httpx.Client, store: Store, acme: clients.Credentials, auth
):
    other = clients.create(store, "other", False, now_ms())[1]
    if auth == "right key, wrong secret":
        auth = (acme.api_key, acme.secret + "x")
    elif auth == "other client's credentials":
        auth = (other.api_key, other.secret)
    for path, params in [
        (TOKEN, {"scope": "profile_api"}),
        (LEGACY, {"client": "acme", "scope": "profile_api"}),
    ]:
        response = http.post(path, params=params, auth=auth)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Basic")
        assert "accessToken" not in response.text and "access_token" not in response.text


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_legacy_endpoint_answers_in_snake_case(
    http: httpx.Client, acme: clients.Credentials, method: str
):
    response = http.request(
        method,
        LEGACY,
        params={"client": "acme", "scope": "profile_api"},
        auth=(acme.api_key, acme.secret),
    )
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["access_token", "scope", "expires_in", "token_type"]
    assert (
        body["scope"] == "profile_api"
        and body["expires_in"] == 21599
        and body["token_type"] == "bearer"
    )
    assert fetch(http, body["access_token"]) == 404


@pytest.mark.parametrize(
    ("path", "params", "fragment"),
    [
        (TOKEN, {}, "authorizationScope=profile_api"),
        (TOKEN, {"authorizationScope": "debug_tools"}, "profile_api scope only"),
    ],
)
def test_bad_token_requests_are_400(
    http: httpx.Client, acme: clients.Credentials, path, params, fragment
):
    response = http.post(path, params=params, auth=(acme.api_key, acme.secret))
    assert response.status_code == 400 and fragment in response.json()["message"]


def test_a_new_token_revokes_the_old_one_after_the_grace_period(
    http: httpx.Client, acme: clients.Credentials, clock: FakeClock
):
    """With token_grace_seconds=30 the old token works 30 more seconds, then is revoked."""

    def create() -> str:
        auth = (acme.api_key, acme.secret)
        return http.post(TOKEN, params={"scope": "profile_api"}, auth=auth).json()["accessToken"]

    old = create()
    new = create()
    clock.advance(29)
    assert fetch(http, old) == 404 and fetch(http, new) == 404
    clock.advance(1)
    assert fetch(http, old) == 403 and fetch(http, new) == 404
    assert (
        "revoked"
        in http.get(
            "/rest/v1/profiles/p1", params={"client": "acme"}, headers={"access_token": old}
        ).json()["message"]
    )


def test_without_grace_the_old_token_is_revoked_at_once(
    database_url: str, store: Store, acme: clients.Credentials, clock: FakeClock
):
    from conftest import LiveServer

    settings = Settings(database=database_url, workers=0)
    with (
        LiveServer(settings, store, workers=0, clock=clock) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        old = http.post(
            TOKEN, params={"scope": "profile_api"}, auth=(acme.api_key, acme.secret)
        ).json()["accessToken"]
        http.post(TOKEN, params={"scope": "profile_api"}, auth=(acme.api_key, acme.secret))
        assert fetch(http, old) == 403


def test_token_lifetime_is_a_per_client_limit(
    http: httpx.Client, store: Store, acme: clients.Credentials, clock: FakeClock
):
    clients.change(store, "acme", limits={"token_ttl_seconds": "60"})
    body = http.post(
        TOKEN, params={"scope": "profile_api"}, auth=(acme.api_key, acme.secret)
    ).json()
    assert body["expiresIn"] == 60
    clock.advance(59)
    assert fetch(http, body["accessToken"]) == 404
    clock.advance(1)
    response = http.get(
        "/rest/v1/profiles/p1",
        params={"client": "acme"},
        headers={"Authorization": "Bearer " + body["accessToken"]},
    )
    assert response.status_code == 403 and "expired at" in response.json()["message"]


def test_new_secret_replaces_the_credentials(
    http: httpx.Client, store: Store, acme: clients.Credentials
):
    fresh = clients.new_secret(store, "acme")[1]
    params = {"scope": "profile_api"}
    assert http.post(TOKEN, params=params, auth=(acme.api_key, acme.secret)).status_code == 401
    assert http.post(TOKEN, params=params, auth=(fresh.api_key, fresh.secret)).status_code == 201


def test_demo_client_has_no_credentials_until_given_some(http: httpx.Client, store: Store):
    response = http.post(
        "/demo/target/authentication/token", params={"scope": "profile_api"}, auth=("x", "y")
    )
    assert response.status_code == 401
    credentials = clients.new_secret(store, "demo")[1]
    response = http.post(
        "/demo/target/authentication/token",
        params={"scope": "profile_api"},
        auth=(credentials.api_key, credentials.secret),
    )
    assert response.status_code == 201


def test_secret_hash_round_trip():
    stored = clients.hash_secret("s3cret")
    assert stored.startswith("scrypt$16384$8$1$")
    assert clients.verify_secret("s3cret", stored)
    assert not clients.verify_secret("s3cret!", stored)
    assert not clients.verify_secret("s3cret", "garbage")
    assert clients.hash_secret("s3cret") != stored  # salted


def test_purge_forgets_tokens_expired_or_revoked_before_the_retention(store: Store):
    """Old tokens go with old batch statuses; a valid one stays."""
    client = clients.create(store, "acme", True, now_ms())[0]
    day = 86_400_000
    start = now_ms() - 40 * day
    expired = tokens.issue(store, client, TEST_SECRET, 3600, 0, start)
    revoked = tokens.issue(store, client, TEST_SECRET, 90 * 86400, 0, start + day)
    valid = tokens.issue(
        store, client, TEST_SECRET, 90 * 86400, 0, start + 2 * day
    )  # revokes `revoked`
    store.purge(now_ms() - 30 * day)
    assert store.find_token(expired.token.token_hash) is None
    assert store.find_token(revoked.token.token_hash) is None
    assert store.find_token(valid.token.token_hash) is not None


def secret_world(settings: Settings, tmp_path: Path, **changes: str) -> Settings:
    """The test's settings with a secret file of its own (rotating must not touch others')."""
    return dataclasses.replace(settings, secret_file=str(tmp_path / "secret"), **changes)


def test_a_restarted_server_shows_the_same_token(store: Store, settings: Settings, tmp_path: Path):
    """The secret file outlives the process: a new server derives the same token again."""
    from conftest import LiveServer

    mine = secret_world(settings, tmp_path)
    credentials = clients.create(store, "acme", True, now_ms())[1]
    auth = (credentials.api_key, credentials.secret)
    params = {"scope": "profile_api"}
    with LiveServer(mine, store, workers=0) as server:
        made = httpx.post(server.url + TOKEN, params=params, auth=auth).json()["accessToken"]
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    with LiveServer(mine, store, workers=0) as server:
        shown = httpx.get(server.url + TOKEN, params=params, auth=auth).json()["accessToken"]
    assert shown == made


def test_a_process_with_another_secret_refuses_to_start(
    store: Store, settings: Settings, tmp_path: Path
):
    """Two processes of one database with different secrets would make tokens the other
    cannot show: the second one is refused, with a message saying what to do."""
    first = secret_world(settings, tmp_path)
    server_secret.open_secret(first, store, now_ms())
    other = dataclasses.replace(first, secret_file=str(tmp_path / "elsewhere" / "secret"))
    with pytest.raises(ConfigError) as refused:
        server_secret.open_secret(other, store, now_ms())
    message = refused.value.message
    assert "is not the one this database's tokens are made with" in message
    assert "a new one was just created there" in message and "secret rotate" in message
    runner = CliRunner()
    env = {
        "PROFILEBASE_DATABASE": settings.database,
        "PROFILEBASE_SECRET": "x" * 40,
        "PROFILEBASE_SECRET_FILE": first.secret_file,
    }
    clients.create(store, "acme", True, now_ms())
    result = runner.invoke(main, ["tokens", "create", "acme"], env=env)
    assert result.exit_code == 1 and "PROFILEBASE_SECRET is not the one" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("value", ["", "short", " " * 40, "x" * 31])
def test_a_short_or_empty_secret_is_refused(
    store: Store, settings: Settings, tmp_path: Path, value: str
):
    """PROFILEBASE_SECRET under 32 characters, or a secret file holding too little, stops the
    process with a message saying how to make a good one."""
    if value.strip():
        given = secret_world(settings, tmp_path, secret=value)
    else:
        (tmp_path / "secret").write_text(value)
        given = secret_world(settings, tmp_path)
    with pytest.raises(ConfigError, match="it needs at least 32. Make one with python3"):
        server_secret.open_secret(given, store, now_ms())


def test_rotating_the_secret_revokes_every_token(store: Store, settings: Settings, tmp_path: Path):
    """`profilebase secret rotate` writes a new secret and revokes every client's tokens;
    a server started afterwards makes and shows tokens with the new one."""
    from conftest import LiveServer

    mine = secret_world(settings, tmp_path)
    credentials = clients.create(store, "acme", True, now_ms())[1]
    auth = (credentials.api_key, credentials.secret)
    params = {"scope": "profile_api"}
    with LiveServer(mine, store, workers=0) as server:
        old = httpx.post(server.url + TOKEN, params=params, auth=auth).json()["accessToken"]
    before = (tmp_path / "secret").read_text()
    env = {"PROFILEBASE_DATABASE": settings.database, "PROFILEBASE_SECRET_FILE": mine.secret_file}
    result = CliRunner().invoke(main, ["secret", "rotate"], env=env)
    assert result.exit_code == 0, result.output
    assert "revoked 1 token(s)" in result.output
    assert (tmp_path / "secret").read_text() != before
    with LiveServer(mine, store, workers=0) as server:
        http = httpx.Client(base_url=server.url)
        refused = http.get(
            "/rest/v1/profiles/p1", params={"client": "acme"}, headers={"access_token": old}
        )
        assert refused.status_code == 403 and "was revoked at" in refused.json()["message"]
        assert http.get(TOKEN, params=params, auth=auth).status_code == 404
        new = http.post(TOKEN, params=params, auth=auth).json()["accessToken"]
        assert http.get(TOKEN, params=params, auth=auth).json()["accessToken"] == new
        http.close()
