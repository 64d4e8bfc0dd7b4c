"""`profilebase export` and `delete`, against a server and directly on its database; the
warning when a batch export cannot key some profiles (reply header and CLI warning)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from helpers import deliver, submit

from profilebase.cli import main
from profilebase.server.settings import Settings


@pytest.fixture
def mixed(http: httpx.Client, drain) -> None:
    """An anonymous profile (anon), one with only a thirdPartyId (crm-2), a linked one (crm-1)."""
    submit(http, b"batch=thirdPartyId,tier,city\ncrm-1,gold,Berlin\ncrm-2,silver\n")
    submit(http, b"batch=pcId,tier\nanon,bronze\n")
    drain()
    deliver(http, {"id": {"tntId": "t1", "thirdPartyId": "crm-1"}})


@pytest.fixture
def run(live_server, monkeypatch: pytest.MonkeyPatch, settings: Settings, request):  # type: ignore[no-untyped-def]
    """The CLI, against the live server or (param "database") directly on its database."""
    monkeypatch.setenv("PROFILEBASE_URL", live_server.url)
    monkeypatch.setenv("PROFILEBASE_CLIENT", "demo")
    where = ["--database", settings.database] if getattr(request, "param", "") == "database" else []

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, [*args, *where])

    return invoke


both = pytest.mark.parametrize("run", ["url", "database"], indirect=True)


def test_a_batch_export_that_leaves_profiles_out_says_how_many(http: httpx.Client, mixed):
    """The reply header counts the profiles a batch file keyed like this has no row for."""
    by_pc_id = http.get("/rest/v1/profiles", params={"client": "demo", "format": "batch"})
    assert by_pc_id.headers["x-profilebase-unkeyed-profiles"] == "1"  # crm-2 has no tntId
    assert by_pc_id.text == "batch=pcId,city,tier\nanon,,bronze\nt1,Berlin,gold\n"
    by_third = http.get(
        "/rest/v1/profiles", params={"client": "demo", "format": "batch", "key": "thirdPartyId"}
    )
    assert by_third.headers["x-profilebase-unkeyed-profiles"] == "1"  # anon has no thirdPartyId
    assert by_third.text == "batch=thirdPartyId,city,tier\ncrm-1,Berlin,gold\ncrm-2,,silver\n"
    jsonl = http.get("/rest/v1/profiles", params={"client": "demo"})
    assert "x-profilebase-unkeyed-profiles" not in jsonl.headers


@both
def test_export_batch_warns_with_the_count_and_the_way_out(run, mixed):  # type: ignore[no-untyped-def]
    result = run("export", "--format", "batch")
    assert result.exit_code == 0, result.output
    assert result.stdout == "batch=pcId,city,tier\nanon,,bronze\nt1,Berlin,gold\n"
    assert "warning: 1 profile(s) have no tntId (pcId)" in result.stderr
    assert "--key thirdPartyId" in result.stderr and "--format jsonl" in result.stderr
    keyed = run("export", "--format", "batch", "--key", "thirdPartyId")
    assert keyed.exit_code == 0 and "have no thirdPartyId" in keyed.stderr


@both
def test_export_jsonl_to_a_file_has_every_profile_and_no_warning(run, mixed, tmp_path: Path):  # type: ignore[no-untyped-def]
    target = tmp_path / "demo.jsonl"
    result = run("export", "-o", str(target))
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and result.stdout == ""
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [p["visitorId"] for p in lines] == ["anon", "crm-1", "crm-2"]
    assert lines[1]["tntIds"] == ["t1"] and lines[1]["thirdPartyId"] == "crm-1"
    assert not (tmp_path / "demo.jsonl.part").exists()


@both
def test_export_of_an_unknown_client_is_refused_and_writes_no_file(run, tmp_path: Path):  # type: ignore[no-untyped-def]
    target = tmp_path / "x.jsonl"
    result = run("export", "--client", "nobody", "-o", str(target))
    assert result.exit_code == 3 and "Unknown client 'nobody'" in result.output
    assert not target.exists() and not (tmp_path / "x.jsonl.part").exists()


def test_key_without_batch_format_is_a_usage_error(run):  # type: ignore[no-untyped-def]
    result = run("export", "--key", "pcId")
    assert result.exit_code == 2 and "--format batch only" in result.output


@both
def test_delete_by_either_id_then_exit_3_when_gone(run, mixed, http: httpx.Client):  # type: ignore[no-untyped-def]
    deleted = run("delete", "--pc-id", "t1")  # a linked tntId deletes the whole profile
    assert deleted.exit_code == 0, deleted.output
    assert "Deleted the profile with pcId 't1'" in deleted.stdout
    assert (
        http.get("/rest/v1/profiles/thirdPartyId/crm-1", params={"client": "demo"}).status_code
        == 404
    )
    assert run("delete", "--third-party-id", "crm-2").exit_code == 0
    again = run("delete", "--third-party-id", "crm-2")
    assert again.exit_code == 3 and "No profile with thirdPartyId 'crm-2'" in again.output


def test_delete_needs_exactly_one_id(run):  # type: ignore[no-untyped-def]
    for args in ([], ["--pc-id", "a", "--third-party-id", "b"]):
        result = run("delete", *args)
        assert result.exit_code == 2 and "exactly one" in result.output
