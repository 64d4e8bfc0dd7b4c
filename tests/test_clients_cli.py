"""`profilebase clients …` and `profilebase tokens …`, and a running server seeing their changes."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from conftest import LiveServer

from profilebase.cli import main
from profilebase.server.settings import Settings
from profilebase.server.storage import Store


def run(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--database", settings.database])


def ok(settings: Settings, *args: str) -> str:
    result = run(settings, *args)
    assert result.exit_code == 0, result.output
    return result.output


def test_create_prints_credentials_once_and_they_work(http: httpx.Client, settings: Settings):
    created = json.loads(ok(settings, "clients", "create", "acme", "--require-auth", "--json"))
    assert set(created) == {"client", "apiKey", "secret", "requireAuth"}
    assert created["client"] == "acme" and created["requireAuth"] is True
    response = http.post(
        "/acme/target/authentication/token",
        params={"authorizationScope": "profile_api"},
        auth=(created["apiKey"], created["secret"]),
    )
    assert response.status_code == 201
    assert created["secret"] not in ok(settings, "clients", "show", "acme")
    assert created["secret"] not in ok(settings, "clients", "list", "--json")


def test_create_in_text_says_the_secret_is_shown_once(settings: Settings):
    output = ok(settings, "clients", "create", "acme")
    assert "API key: " in output and "Secret:  " in output and "shown this once" in output


@pytest.mark.parametrize("code", ["", "ACME", "a b", "x" * 65, "acme!", "é"])
def test_invalid_client_codes_are_one_clear_line(settings: Settings, code: str):
    result = run(settings, "clients", "create", code)
    assert result.exit_code != 0
    assert "Invalid client code" in result.output and "a-z" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("code", ["a", "x" * 64, "acme_eu-1", "0"])
def test_valid_client_codes(settings: Settings, code: str):
    ok(settings, "clients", "create", code)


def test_create_twice_is_an_error(settings: Settings):
    ok(settings, "clients", "create", "acme")
    result = run(settings, "clients", "create", "acme")
    assert result.exit_code != 0 and "exists already" in result.output


def test_list_and_show(settings: Settings, store: Store):
    ok(settings, "clients", "create", "acme", "--require-auth")
    ok(
        settings,
        "clients",
        "set",
        "acme",
        "--limit",
        "rows_per_day=10",
        "--limit",
        "business_hours=mon-fri 08:00-17:00 Europe/Berlin",
    )
    listed = json.loads(ok(settings, "clients", "list", "--json"))
    assert [c["client"] for c in listed] == ["acme", "demo"]
    assert listed[0]["limitOverrides"] == {
        "rows_per_day": 10,
        "business_hours": "mon-fri 08:00-17:00 Europe/Berlin",
    }
    text = ok(settings, "clients", "list")
    assert "acme" in text and "required" in text and "rows_per_day=10" in text
    shown = json.loads(ok(settings, "clients", "show", "acme", "--json"))
    assert shown["limits"]["rows_per_day"] == {"value": 10, "override": True}
    assert shown["limits"]["max_batch_rows"] == {"value": 500000, "override": False}
    assert shown["activeToken"] is None and shown["rowsLast24h"] == 0
    assert "rows_per_day = 10 (client's own)" in ok(settings, "clients", "show", "acme")
    result = run(settings, "clients", "show", "nobody")
    assert result.exit_code != 0 and "Unknown client 'nobody'" in result.output


@pytest.mark.parametrize(
    ("limit", "fragment"),
    [
        ("rows_per_day", "is not NAME=VALUE"),
        ("speed=3", "Unknown limit 'speed'"),
        ("rows_per_day=many", "is not a valid int"),
        ("rows_per_day=0", "must be positive"),
        ("bulk_requests_per_minute=-1", "must be 0 or more"),
        ("business_hours=9 to 5", "is not HH:MM-HH:MM"),
    ],
)
def test_bad_limits_are_clear_errors(settings: Settings, store: Store, limit: str, fragment: str):
    result = run(settings, "clients", "set", "demo", "--limit", limit)
    assert result.exit_code != 0 and fragment in result.output
    assert "Traceback" not in result.output


def test_an_empty_limit_value_restores_the_default(settings: Settings, store: Store):
    ok(settings, "clients", "set", "demo", "--limit", "rows_per_day=10")
    ok(settings, "clients", "set", "demo", "--limit", "rows_per_day=")
    assert json.loads(ok(settings, "clients", "show", "demo", "--json"))["limitOverrides"] == {}


def test_a_running_server_sees_changes_at_once(http: httpx.Client, settings: Settings):
    """Authorization, disabling and tokens made on the command line apply to the next request."""

    def fetch(headers: dict[str, str] | None = None) -> httpx.Response:
        return http.get("/rest/v1/profiles/x", params={"client": "demo"}, headers=headers)

    assert fetch().status_code == 404
    ok(settings, "clients", "set", "demo", "--require-auth")
    assert fetch().status_code == 401
    token = json.loads(ok(settings, "tokens", "create", "demo", "--json"))["accessToken"]
    assert fetch({"Authorization": f"Bearer {token}"}).status_code == 404
    assert f"...{token[-4:]}" in ok(settings, "clients", "show", "demo")
    assert "Revoked 1 token" in ok(settings, "tokens", "revoke", "demo")
    assert fetch({"Authorization": f"Bearer {token}"}).status_code == 403
    ok(settings, "clients", "set", "demo", "--no-require-auth")
    assert fetch().status_code == 404
    ok(settings, "clients", "disable", "demo")
    assert fetch().status_code == 403
    ok(settings, "clients", "enable", "demo")
    assert fetch().status_code == 404


def test_new_secret_prints_new_credentials(settings: Settings):
    first = json.loads(ok(settings, "clients", "create", "acme", "--json"))
    second = json.loads(ok(settings, "clients", "new-secret", "acme", "--json"))
    assert second["apiKey"] != first["apiKey"] and second["secret"] != first["secret"]


def test_commands_on_a_fresh_database_migrate_it(tmp_path: Path):
    settings = Settings(database=f"sqlite:///{tmp_path}/fresh.db")
    assert json.loads(ok(settings, "clients", "list", "--json")) == []


def test_no_demo(database_url: str):
    """With demo off the server starts without the `demo` client (serve --no-demo)."""
    settings = Settings(database=database_url, workers=0, demo=False)
    from profilebase.server.storage import open_store

    nodemo = open_store(settings.database)
    try:
        with LiveServer(settings, nodemo, workers=0) as server:
            response = httpx.get(server.url + "/rest/v1/profiles/x", params={"client": "demo"})
            assert (
                response.status_code == 404
                and "Unknown client 'demo'" in response.json()["message"]
            )
        assert nodemo.list_clients() == []
    finally:
        nodemo.close()
    assert Settings.from_env({"PROFILEBASE_DEMO": "false"}).demo is False
    assert "--no-demo" in CliRunner().invoke(main, ["serve", "--help"]).output


@pytest.mark.parametrize("group", ["clients", "tokens"])
def test_every_subcommand_takes_database(group: str):
    """Each `clients` and `tokens` subcommand has --database, as `serve` does."""
    commands = main.commands[group].commands  # type: ignore[attr-defined]
    assert commands
    for name, command in commands.items():
        options = {o for p in command.params for o in getattr(p, "opts", [])}
        assert "--database" in options, f"{group} {name} has no --database"


def test_commands_read_the_database_from_the_environment(settings: Settings, store: Store):
    """Without --database, PROFILEBASE_DATABASE names the database."""
    result = CliRunner().invoke(
        main,
        ["clients", "create", "acme", "--json"],
        env={"PROFILEBASE_DATABASE": settings.database},
    )
    assert result.exit_code == 0, result.output
    assert [c.code for c in store.list_clients()] == ["acme", "demo"]
