"""The client commands end to end: push, status, get, update against a working server."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from conftest import LiveServer, free_port
from helpers import TEST_SECRET

from profilebase.cli import main
from profilebase.client.console import ProgressBar
from profilebase.client.push import PushProgress
from profilebase.models import now_ms
from profilebase.server import clients, tokens
from profilebase.server.ingest import Intake, store_batch
from profilebase.server.settings import Settings, client_limits
from profilebase.server.storage import Store

DOCS = Path(__file__).parent.parent / "docs" / "client.md"


@pytest.fixture
def settings(database_url: str) -> Settings:
    """A worker that looks for work every 10 ms, so waiting clients are not kept long."""
    return Settings(database=database_url, workers=0, poll_interval=0.01)


@pytest.fixture
def run(working_server: LiveServer, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run the CLI configured by the environment, as a user's shell would."""
    monkeypatch.setenv("PROFILEBASE_URL", working_server.url)
    monkeypatch.setenv("PROFILEBASE_CLIENT", "demo")
    for name in ("PROFILEBASE_TOKEN", "PROFILEBASE_KEY_ID", "PROFILEBASE_SECRET"):
        monkeypatch.delenv(name, raising=False)

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, [*args, "--poll-interval", "0.01"])

    return invoke


def csv_file(tmp_path: Path, text: str, name: str = "crm.csv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_push_applies_every_row_exit_0(run, tmp_path: Path):  # type: ignore[no-untyped-def]
    source = csv_file(tmp_path, "customer;tier;city\nc-1;gold;München\nc-2;silver;東京\n")
    result = run("push", source)
    assert result.exit_code == 0, result.output
    assert "read 2 rows" in result.stdout and "applied 2 · not found 0 · failed 0" in result.stdout
    profile = run("get", "c-2", "--third-party")
    assert profile.exit_code == 0
    assert json.loads(profile.stdout)["profileAttributes"]["city"]["value"] == "東京"


def test_failed_rows_exit_4_and_the_fixed_file_exits_0(run, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Exit 4 with an errors file; the fixed errors file pushes with exit 0."""
    source = csv_file(tmp_path, "id,tier\nok,gold\nbad/1,silver\n")
    errors = tmp_path / "errors.csv"
    result = run("push", source, "--errors-out", str(errors))
    assert result.exit_code == 4, result.output
    assert "1 failed rows written to" in result.stdout
    text = errors.read_text(encoding="utf-8")
    assert text.startswith("id,tier,reason\nbad/1,silver,thirdPartyId must not contain")
    errors.write_text(text.replace("bad/1", "bad-1"), encoding="utf-8")
    again = run("push", str(errors))
    assert again.exit_code == 0, again.output
    assert "not pushed: reason" in again.stdout


@pytest.mark.parametrize(
    ("content", "args", "fragment"),
    [
        (b"id,a\n1,M\xfcnchen\n", (), "is not UTF-8"),
        (b"id,profile.a\n1,x\n", (), "without the `profile.` prefix"),
        (b"id,a\n1,x\n", ("--id-column", "customer"), "There is no id column 'customer'"),
        (b"id,a\n1,x\n", ("--client", "nobody"), "Unknown client 'nobody'"),
    ],
)
def test_rejected_input_exits_3(run, tmp_path: Path, content: bytes, args, fragment: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    result = run("push", str(path), *args)
    assert result.exit_code == 3, result.output
    assert fragment in result.stderr and "Traceback" not in result.output


def test_missing_client_is_a_usage_error_exit_2(run, tmp_path: Path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("PROFILEBASE_CLIENT")
    result = run("push", csv_file(tmp_path, "id,a\n1,x\n"))
    assert result.exit_code == 2 and "--client" in result.stderr


def test_unreachable_server_exits_5(tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}"
    source = csv_file(tmp_path, "id,a\n1,x\n")
    result = CliRunner().invoke(
        main, ["push", source, "--url", url, "--client", "demo", "--retries", "0"]
    )
    assert result.exit_code == 5 and "No answer from" in result.stderr


def test_unfinished_batch_exits_5(live_server: LiveServer, tmp_path: Path):
    """No worker runs on this server: a push that stops waiting reports it and exits 5."""
    source = csv_file(tmp_path, "id,a\n1,x\n")
    args = ["push", source, "--url", live_server.url, "--client", "demo", "--timeout", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 5, result.output
    assert "not every batch finished" in result.stdout


def test_no_wait_exits_0_once_accepted(live_server: LiveServer, tmp_path: Path):
    source = csv_file(tmp_path, "id,a\n1,x\n")
    args = ["push", source, "--url", live_server.url, "--client", "demo", "--no-wait"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert re.search(r"in 1 batch\(es\): demo-\d+-\d+", result.stdout)


def test_no_wait_with_refused_rows_exits_4(live_server: LiveServer, tmp_path: Path):
    source = csv_file(tmp_path, "id,a\n1,x\n+,y\n")
    args = ["push", source, "--url", live_server.url, "--client", "demo", "--no-wait"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 4, result.output
    assert "not waited for; refused before sending 1" in result.stdout


def test_every_row_refused_exits_4(run, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Nothing left to send is not a success: the refused rows are reported."""
    result = run("push", csv_file(tmp_path, "id,a\n+,x\n/,y\n"))
    assert result.exit_code == 4, result.output
    assert "sent 0 rows in 0 batch(es): none" in result.stdout


def test_v1_rows_for_missing_profiles_exit_4(run, tmp_path: Path):  # type: ignore[no-untyped-def]
    result = run("push", csv_file(tmp_path, "id,a\nnobody,x\n"), "--v1")
    assert result.exit_code == 4 and "v1 does not create them" in result.stdout


def test_dry_run_exit_codes(run, tmp_path: Path, store: Store):  # type: ignore[no-untyped-def]
    clean = run("push", csv_file(tmp_path, "id,a\n1,x\n"), "--dry-run")
    assert clean.exit_code == 0 and "dry run: 1 rows would be applied" in clean.stdout
    dirty = run("push", csv_file(tmp_path, "id,a\n1,x\n+,y\n", "dirty.csv"), "--dry-run")
    assert dirty.exit_code == 4 and "1 would fail" in dirty.stdout
    assert store.rows_accepted_since(1, 0) == 0


@pytest.mark.parametrize("given_as", ["flag", "environment"])
def test_push_with_a_token_to_a_client_that_requires_authorization(  # type: ignore[no-untyped-def]
    run, tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch, given_as: str
):
    """--token (or PROFILEBASE_TOKEN) goes with every call: the push and the reads succeed."""
    client = clients.create(store, "secure", True, now_ms())[0]
    token = tokens.issue(store, client, TEST_SECRET, 3600, 0, now_ms()).value
    args = ["--client", "secure"]
    if given_as == "flag":
        args += ["--token", token]
    else:
        monkeypatch.setenv("PROFILEBASE_TOKEN", token)
    result = run("push", csv_file(tmp_path, "id,tier\nc-1,gold\n"), *args)
    assert result.exit_code == 0, result.output
    assert "applied 1 · not found 0 · failed 0" in result.stdout
    batch_id = re.search(r"secure-\d+-\d+", result.stdout)
    assert batch_id is not None
    assert run("status", batch_id.group(0), *args).exit_code == 0
    profile = run("get", "c-1", "--third-party", *args)
    assert json.loads(profile.stdout)["profileAttributes"]["tier"]["value"] == "gold"


@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_push_without_the_right_token_exits_3(  # type: ignore[no-untyped-def]
    run, tmp_path: Path, store: Store, token: str | None
):
    """A client that requires authorization refuses a push without its token, before a
    row is sent: one sentence, exit 3 (refused)."""
    client = clients.create(store, "secure", True, now_ms())[0]
    tokens.issue(store, client, TEST_SECRET, 3600, 0, now_ms())
    args = ["--client", "secure"] + ([] if token is None else ["--token", token])
    result = run("push", csv_file(tmp_path, "id,tier\nc-1,gold\n"), *args)
    assert result.exit_code == 3, result.output
    expected = "requires an authorization token" if token is None else "is not valid"
    assert expected in result.stderr and "Traceback" not in result.output
    assert store.rows_accepted_since(client.id, 0) == 0


@pytest.mark.parametrize("given_as", ["flag", "environment"])
def test_push_with_an_api_key_and_secret(  # type: ignore[no-untyped-def]
    run, tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch, given_as: str
):
    """--key-id/--secret (or PROFILEBASE_KEY_ID/_SECRET) get a token: push, status, get work."""
    credentials = clients.create(store, "secure", True, now_ms())[1]
    args = ["--client", "secure"]
    if given_as == "flag":
        args += ["--key-id", credentials.api_key, "--secret", credentials.secret]
    else:
        monkeypatch.setenv("PROFILEBASE_KEY_ID", credentials.api_key)
        monkeypatch.setenv("PROFILEBASE_SECRET", credentials.secret)
    result = run("push", csv_file(tmp_path, "id,tier\nc-1,gold\n"), *args)
    assert result.exit_code == 0, result.output
    batch_id = re.search(r"secure-\d+-\d+", result.stdout)
    assert batch_id is not None
    assert run("status", batch_id.group(0), *args).exit_code == 0
    profile = run("get", "c-1", "--third-party", *args)
    assert json.loads(profile.stdout)["profileAttributes"]["tier"]["value"] == "gold"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--secret", "wrong"], "Wrong API key or secret for client 'secure'"),
        (["--secret", "s", "--url", "https://secure.tt.omtrdc.net"], "Adobe IMS"),
    ],
)
def test_push_with_a_wrong_secret_or_to_target_exits_3(  # type: ignore[no-untyped-def]
    run, tmp_path: Path, store: Store, extra: list[str], fragment: str
):
    """A wrong secret, or key and secret against Target: one sentence, exit 3, no row sent."""
    client, credentials = clients.create(store, "secure", True, now_ms())
    args = ["--client", "secure", "--key-id", credentials.api_key, *extra]
    result = run("push", csv_file(tmp_path, "id,tier\nc-1,gold\n"), *args)
    assert result.exit_code == 3, result.output
    assert fragment in result.stderr and "Traceback" not in result.output
    assert store.rows_accepted_since(client.id, 0) == 0


def test_columns_and_delimiter_flags(run, tmp_path: Path):  # type: ignore[no-untyped-def]
    source = csv_file(tmp_path, "a|id|b\n1|k|2\n")
    result = run("push", source, "--delimiter", "|", "--id-column", "id", "--columns", "b")
    assert result.exit_code == 0, result.output
    profile = json.loads(run("get", "k", "--third-party").stdout)
    assert list(profile["profileAttributes"]) == ["b"]


def accept_old_batch(store: Store, settings: Settings) -> str:
    """A batch accepted an hour ago that nothing has applied: stuck by now."""
    client = store.get_client("demo")
    assert client is not None
    limits = client_limits(settings, client.limits)
    intake = Intake(limits, settings.unit_rows)
    intake.feed(b"batch=thirdPartyId,a\nx,1\n")
    return store_batch(store, client, 2, intake.finish(), limits, now_ms() - 3_600_000)[1]


def test_status_and_watch(live_server: LiveServer, store: Store, settings: Settings):
    """status prints the fields (exit 0); --watch on a stuck batch exits 5 with the reason."""
    batch_id = accept_old_batch(store, settings)
    base = ["--url", live_server.url, "--client", "demo", "--poll-interval", "0"]
    shown = CliRunner().invoke(main, ["status", batch_id, *base])
    assert shown.exit_code == 0 and "state: stuck" in shown.stdout
    watched = CliRunner().invoke(main, ["status", batch_id, "--watch", *base])
    assert watched.exit_code == 5 and "is stuck: no progress" in watched.stderr


def test_status_watch_of_a_batch_with_failed_rows_exits_4(run, working_server: LiveServer):  # type: ignore[no-untyped-def]
    """A batch sent by other means, with a row the server fails: watched to the end, exit 4."""
    body = b"batch=thirdPartyId,a\nok,1\nbad,%zz\n"
    reply = httpx.post(f"{working_server.url}/m2/demo/v2/profile/batchUpdate", content=body)
    batch_id = re.search(r"batchId=([\w-]+)", reply.text).group(1)  # type: ignore[union-attr]
    result = run("status", batch_id, "--watch")
    assert result.exit_code == 4, result.output
    assert "failedUpdates: 1" in result.stdout


def test_get_missing_profile_exits_3(run):  # type: ignore[no-untyped-def]
    result = run("get", "nobody")
    assert result.exit_code == 3 and "No profile with pcId 'nobody'" in result.stderr


def test_update_of_an_unknown_profile_exits_3(run):  # type: ignore[no-untyped-def]
    """The single update creates nothing; the server's 404 is reported as refused."""
    result = run("update", "x", "a=1", "--third-party")
    assert result.exit_code == 3
    assert "No profile found for client demo with mbox3rdPartyId=x" in result.stderr


def test_update_of_an_existing_profile_exits_0(run, tmp_path: Path):  # type: ignore[no-untyped-def]
    assert run("push", csv_file(tmp_path, "id,a\nu1,1\n")).exit_code == 0
    assert run("update", "u1", "a=2", "b=3", "--third-party").exit_code == 0
    result = run("get", "u1", "--third-party")
    assert result.exit_code == 0
    attributes = json.loads(result.stdout)["profileAttributes"]
    assert {name: a["value"] for name, a in attributes.items()} == {"a": "2", "b": "3"}


def test_update_needs_name_value_pairs(run):  # type: ignore[no-untyped-def]
    assert run("update", "x", "novalue").exit_code == 2


def test_progress_bar_shows_rows_applied_rate_and_eta():
    """On a terminal the bar shows rows applied out of rows sent, rows per second and ETA."""
    from rich.console import Console

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    with ProgressBar("reading", console) as bar:
        for applied in (0, 400, 1_000):
            bar.push(PushProgress("applying", 1_000, 1_000, applied, 1, 1))
            bar.progress.refresh()
    text = screen.getvalue()
    assert "applying" in text and "400/1000 rows" in text and "1000/1000 rows" in text
    assert "rows/s" in text and "ETA" in text


def test_progress_bar_stays_off_when_not_a_terminal():
    """Pipes and logs get the summary alone: no bar is drawn."""
    from rich.console import Console

    screen = io.StringIO()
    with ProgressBar("reading", Console(file=screen)) as bar:
        bar.push(PushProgress("applying", 10, 10, 5, 1, 1))
    assert screen.getvalue() == ""


@pytest.mark.parametrize("command", ["push", "status", "get", "update"])
def test_client_commands_and_options_are_documented(command: str):
    """docs/client.md names every client command and every one of its options."""
    docs = DOCS.read_text(encoding="utf-8")
    assert f"profilebase {command}" in docs
    for param in main.commands[command].params:  # type: ignore[attr-defined]
        for option in getattr(param, "opts", []):
            if option.startswith("--"):
                assert option in docs, f"{command} {option}"
