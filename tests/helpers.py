"""Small helpers for tests that talk to the API."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx

from profilebase import batchfile
from profilebase.models import Counts, now_ms
from profilebase.server.decoder import decode_unit
from profilebase.server.secret import ServerSecret
from profilebase.server.storage import Store
from profilebase.server.storage.base import UnitClaim


def xml_fields(response: httpx.Response) -> dict[str, str]:
    """The text of each direct child of <response> (the last one wins for repeated tags)."""
    assert response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.content)
    assert root.tag == "response"
    return {child.tag: (child.text or "") for child in root}


def failed_ids(response: httpx.Response) -> list[str]:
    root = ET.fromstring(response.content)
    return [p.findtext("id") or "" for p in root.findall("profile")]


def batch_id_of(response: httpx.Response) -> str:
    url = xml_fields(response)["batchStatus"]
    match = re.search(r"batchId=([^&]+)", url)
    assert match, url
    return match.group(1)


def submit(
    http: httpx.Client, body: bytes, client: str = "demo", v2: bool = True
) -> httpx.Response:
    path = f"/m2/{client}/v2/profile/batchUpdate" if v2 else f"/m2/{client}/profile/batchUpdate"
    return http.post(path, content=body)


def status(
    http: httpx.Client, batch_id: str, client: str = "demo", details: bool = True
) -> dict[str, str]:
    params = {"batchId": batch_id}
    if details:
        params["showDetails"] = "true"
    response = http.get(f"/m2/{client}/profile/batchStatus", params=params)
    assert response.status_code == 200, response.text
    return xml_fields(response)


def attributes(
    http: httpx.Client, identifier: str, third_party: bool = True, client: str = "demo"
) -> dict[str, str] | None:
    path = (
        f"/rest/v1/profiles/thirdPartyId/{identifier}"
        if third_party
        else f"/rest/v1/profiles/{identifier}"
    )
    response = http.get(path, params={"client": client})
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return {name: a["value"] for name, a in response.json()["profileAttributes"].items()}


def apply_claim(
    store: Store, claim: UnitClaim, max_profile_bytes: int = 2_048_000
) -> Counts | None:
    """Decode and apply one claimed unit, as a worker would."""
    header = batchfile.Header(claim.key_kind, claim.names)
    rows, failures = decode_unit(claim.body, claim.first_line, header, claim.batch_seq, now_ms())
    return store.apply_unit(claim, rows, failures, now_ms(), max_profile_bytes)


def update(
    http: httpx.Client, method: str = "GET", client: str = "demo", **params: str
) -> httpx.Response:
    """A single profile update with ``params`` in the query string (``profile_x`` means ``profile.x``)."""
    query = {name.replace("profile_", "profile.", 1): value for name, value in params.items()}
    return http.request(method, f"/m2/{client}/profile/update", params=query)


def deliver(
    http: httpx.Client, payload: dict, client: str = "demo", session: str = "s1"
) -> httpx.Response:
    """A Delivery API call."""
    return http.post(
        "/rest/v1/delivery", params={"client": client, "sessionId": session}, json=payload
    )


def run_sql(database_url: str, sql: str) -> list[tuple]:
    """Run one statement on the database from outside the store, as an operator's shell
    would, and return its rows (none for a statement that returns none)."""
    if database_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as db:
            return db.execute(sql).fetchall()
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as db:
        cursor = db.execute(sql.encode())
        return cursor.fetchall() if cursor.description else []


#: A server secret for tokens a test issues straight into the store; the server checks such
#: tokens by their hash, whatever secret it has.
TEST_SECRET = ServerSecret(b"test-secret-" + b"0" * 52, "tests")


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process it started, and they started (Linux's /proc)."""
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        try:
            children = Path(f"/proc/{found[-1]}/task/{found[-1]}/children").read_text()
        except OSError:  # it exited meanwhile
            continue
        todo.extend(int(child) for child in children.split())
    return found
