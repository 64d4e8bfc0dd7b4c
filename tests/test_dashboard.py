"""The dashboard at /ui with the real app over a socket: every page, escaping of hostile ids
and values, the failed rows and their CSV, the upload form, and who may log in and see what.

The isolation table of tests/test_authorization.py runs every dashboard route against every
kind of session too; here are the login and session rules themselves."""

from __future__ import annotations

import csv
import html
import io
import re
import urllib.parse

import httpx
import pytest
from helpers import TEST_SECRET, batch_id_of, submit
from markupsafe import escape

from profilebase.client.push import map_columns
from profilebase.models import now_ms
from profilebase.server import clients, tokens
from profilebase.server.settings import Settings
from profilebase.server.storage import Store
from profilebase.server.web.dashboard import find_viewer

ADMIN = "correct horse battery staple"
#: A thirdPartyId, attribute names and values as a hostile CSV could hold them.
HOSTILE_ID = "<img src=x onerror=alert(1)>\"'"
HOSTILE_NAME = "<b>name</b>"
HOSTILE_VALUE = "</td><script>alert('x')</script>&amp;\"quoted\""
PAGES = [
    "/ui",
    "/ui/batches",
    "/ui/batches?state=incomplete",
    "/ui/batches?client=demo&state=complete",
    "/ui/profiles",
    "/ui/profiles?client=demo&kind=thirdPartyId&id=nobody",
    "/ui/login",
]


def encoded(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def csrf_of(http: httpx.Client, path: str = "/ui/login") -> str:
    """The CSRF token a page's forms carry (the page also sets the session cookie)."""
    page = http.get(path)
    assert page.status_code == 200, page.text
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def log_in(http: httpx.Client, **fields: str) -> httpx.Response:
    return http.post("/ui/login", data={"csrf": csrf_of(http), **fields})


def upload(
    http: httpx.Client, body: bytes, client: str = "demo", csrf: str | None = None, **headers: str
) -> httpx.Response:
    token = csrf if csrf is not None else csrf_of(http, "/ui/batches")
    return http.post(
        "/ui/upload",
        data={"csrf": token, "client": client, "version": "2"},
        files={"batch": ("batch.txt", body, "text/plain")},
        headers=headers,
    )


def test_the_root_is_the_dashboard(http: httpx.Client):
    response = http.get("/")
    assert response.status_code == 307 and response.headers["location"] == "/ui"


def test_every_page_opens_in_the_demo_setup_and_says_it_is_open(http: httpx.Client, drain):
    batch_id = batch_id_of(submit(http, b"batch=thirdPartyId,a\nx,1\ny,2,3\n"))
    drain()
    for path in [
        *PAGES,
        f"/ui/batches/demo/{batch_id}",
        "/ui/profiles?client=demo&kind=thirdPartyId&id=x",
    ]:
        page = http.get(path)
        assert page.status_code == 200, (path, page.text)
        assert page.headers["content-type"].startswith("text/html")
        assert "Open dashboard: no client requires authorization" in page.text, path
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-store"
        assert "https://" not in page.text and "//cdn" not in page.text
    for name in ["dashboard.css", "dashboard.js"]:
        assert http.get(f"/ui/static/{name}").status_code == 200
    assert http.get("/ui/static/..%2Fapp.py").status_code == 404
    assert http.get("/ui/static/nothing.js").status_code == 404


def test_hostile_ids_names_and_values_are_escaped_everywhere(http: httpx.Client, drain):
    body = (
        f"batch=thirdPartyId,{encoded(HOSTILE_NAME)}\n"
        f"{encoded(HOSTILE_ID)},{encoded(HOSTILE_VALUE)}\n"
        f"{encoded(HOSTILE_ID)}x,1,{encoded(HOSTILE_VALUE)}\n"
    ).encode()
    batch_id = batch_id_of(submit(http, body))
    drain()
    lookup = "/ui/profiles?" + urllib.parse.urlencode(
        {"client": "demo", "kind": "thirdPartyId", "id": HOSTILE_ID}
    )
    pages = {
        path: http.get(path).text
        for path in ["/ui", "/ui/batches", f"/ui/batches/demo/{batch_id}", lookup]
    }
    for path, text in pages.items():
        for raw in ["<script>", "<img", "<b>name", "onerror=alert(1)>"]:
            assert raw not in text, (path, raw)
    profile = pages[lookup]
    assert str(escape(HOSTILE_VALUE)) in profile
    assert str(escape(HOSTILE_NAME)) in profile
    assert "&lt;img src=x onerror=alert(1)&gt;" in profile
    failed = pages[f"/ui/batches/demo/{batch_id}"]
    assert "&lt;img src=x onerror=alert(1)&gt;&#34;&#39;x" in failed
    csv_text = http.get(f"/ui/batches/demo/{batch_id}/failed.csv").text
    header, row = csv.reader(io.StringIO(csv_text))
    assert header == ["thirdPartyId", HOSTILE_NAME, "reason"]
    assert row[:2] == [HOSTILE_ID + "x", "1"]


def test_failed_rows_are_paged_and_download_as_a_file_to_fix_and_push(http: httpx.Client, drain):
    rows = "".join(f"bad-{i:03},1,extra\n" for i in range(150))
    body = f"batch=thirdPartyId,tier\nok-1,gold\n{rows}".encode()
    batch_id = batch_id_of(submit(http, body))
    drain()
    first = http.get(f"/ui/batches/demo/{batch_id}")
    assert first.text.count('<tr id="line-') == 100
    assert "bad-000" in first.text and "bad-100" not in first.text
    more = re.search(r'id="more-failures" href="\?after=(\d+)"', first.text)
    assert more
    second = http.get(f"/ui/batches/demo/{batch_id}", params={"after": more.group(1)})
    assert second.text.count('<tr id="line-') == 50
    assert "bad-100" in second.text and "bad-149" in second.text
    assert 'id="more-failures"' not in second.text
    download = http.get(f"/ui/batches/demo/{batch_id}/failed.csv")
    assert download.headers["content-disposition"] == (
        f'attachment; filename="{batch_id}-failed.csv"'
    )
    table = list(csv.reader(io.StringIO(download.text)))
    assert table[0] == ["thirdPartyId", "tier", "reason"]
    assert len(table) == 151 and table[1][:2] == ["bad-000", "1"]
    assert "cells" in table[1][2]
    mapping = map_columns(table[0])  # `profilebase push` takes it back, reason left out
    assert mapping.names == ("tier",)


def test_the_batch_list_filters_by_state_and_client_and_pages(
    http: httpx.Client, store: Store, drain
):
    clients.create(store, "other", False, now_ms())
    done = batch_id_of(submit(http, b"batch=thirdPartyId,a\nx,1\n"))
    drain()
    waiting = batch_id_of(submit(http, b"batch=thirdPartyId,a\ny,1\n"))
    theirs = batch_id_of(submit(http, b"batch=thirdPartyId,a\nz,1\n", client="other"))

    def listed(**params: str) -> list[str]:
        page = http.get("/ui/batches", params=params)
        assert page.status_code == 200, page.text
        return re.findall(r'<tr data-batch="([^"]+)"', page.text)

    assert listed() == [theirs, waiting, done]
    assert listed(state="complete") == [done]
    assert listed(state="incomplete") == [theirs, waiting]
    assert listed(state="queued") == [theirs, waiting]
    assert listed(state="processing") == []
    assert listed(client="other") == [theirs]
    for _ in range(50):
        submit(http, b"batch=thirdPartyId,a\nw,1\n")
    page = http.get("/ui/batches").text
    older = re.search(r'id="older" href="([^"]+)"', page)
    assert older
    rest = re.findall(r'<tr data-batch="([^"]+)"', http.get(html.unescape(older.group(1))).text)
    assert rest == [theirs, waiting, done]


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/ui/batches?state=bogus", "Unknown state &#39;bogus&#39;"),
        ("/ui/batches?before=abc", "The before parameter must be a whole number"),
        ("/ui/batches?client=nobody", "No client &#39;nobody&#39; here"),
        ("/ui/profiles?client=demo&kind=ecid&id=x", "Unknown id kind"),
        ("/ui/profiles?client=demo&kind=pcId&id=a%00b", "contains a control character"),
        ("/ui/batches/demo/demo-1-1%00", "contains a control character"),
        ("/ui/batches/demo/demo-1-1", "No batch &#39;demo-1-1&#39;"),
        ("/ui/batches/demo/demo-1-1?after=-1", "must be a whole number"),
    ],
)
def test_bad_parameters_get_a_page_that_says_what_is_wrong(
    http: httpx.Client, path: str, fragment: str
):
    page = http.get(path)
    assert page.status_code in (400, 404)
    assert page.headers["content-type"].startswith("text/html")
    assert fragment in page.text
    assert "Traceback" not in page.text and "Error:" not in page.text


def test_the_overview_shows_rows_per_minute_queue_and_quota(http: httpx.Client, drain):
    submit(http, b"batch=thirdPartyId,a\nx,1\ny,2\nz,3,4\n")
    queued = http.get("/ui").text
    assert re.search(r'id="queue-rows">3<', queued) and re.search(r'id="queue-units">1<', queued)
    drain()
    page = http.get("/ui").text
    assert "2 applied, 1 failed in the last hour" in page
    assert re.search(r'id="queue-rows">0<', page)
    assert re.search(r'<td class="n">3</td><td class="n">1,000,000</td>', page)
    assert page.count('<rect class="applied"') == 60


def test_a_batch_uploaded_with_the_form_is_accepted_and_shown(http: httpx.Client, drain):
    response = upload(http, b"batch=thirdPartyId,a\nu-1,1\nu-2,2,3\n")
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith("/ui/batches/demo/demo-")
    assert "queued" in http.get(location).text
    drain()
    page = http.get(location).text
    assert 'id="batch-state">complete<' in page and "100%" in page


def test_the_upload_form_refuses_a_bad_file_with_its_reason(http: httpx.Client, store: Store):
    response = upload(http, b"batch=email,a\nx,1\n")
    assert response.status_code == 400
    assert "The first header must be exactly `pcId` or `thirdPartyId`, got &#39;email&#39;" in (
        response.text
    )
    assert store.pending_units() == 0


@pytest.mark.parametrize(
    ("csrf", "headers"),
    [("", {}), ("forged", {}), (None, {"Origin": "https://evil.example"})],
    ids=["no token", "wrong token", "other site"],
)
def test_the_upload_form_needs_its_csrf_token(
    http: httpx.Client, store: Store, csrf: str | None, headers: dict[str, str]
):
    response = upload(http, b"batch=thirdPartyId,a\nx,1\n", csrf=csrf, **headers)
    assert response.status_code == 403
    assert store.pending_units() == 0


# -- logins -------------------------------------------------------------------------------


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database=database_url,
        workers=0,
        unit_rows=50,
        admin_password=ADMIN,
        auth_failures_per_minute=5,
    )


@pytest.fixture
def acme(store: Store) -> str:
    """Client `acme`, which requires authorization (so the dashboard asks for logins)."""
    clients.create(store, "acme", True, now_ms())
    return "acme"


def token_for(store: Store, code: str) -> str:
    client = store.get_client(code)
    assert client is not None
    return tokens.issue(store, client, TEST_SECRET, 3600, 0, now_ms()).value


def test_a_client_that_requires_authorization_locks_every_page(
    http: httpx.Client, store: Store, acme: str
):
    batch_id = batch_id_of(submit(http, b"batch=thirdPartyId,a\nx,1\n"))
    for path in [*PAGES[:-1], f"/ui/batches/demo/{batch_id}/failed.csv"]:
        response = http.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/ui/login?" + urllib.parse.urlencode({"next": path})
    login = http.get("/ui/login")
    assert login.status_code == 200 and "Open dashboard" not in login.text
    refused = upload(http, b"batch=thirdPartyId,a\nx,1\n", csrf="anything")
    assert refused.status_code == 303
    assert store.pending_units() == 1


def test_the_admin_sees_every_client(http: httpx.Client, store: Store, acme: str):
    theirs = batch_id_of(
        http.post(
            "/m2/acme/v2/profile/batchUpdate",
            content=b"batch=thirdPartyId,a\nx,1\n",
            headers={"Authorization": "Bearer " + token_for(store, acme)},
        )
    )
    wrong = log_in(http, password=ADMIN + "!")
    assert wrong.status_code == 403 and "Wrong password" in wrong.text
    right = log_in(http, password=ADMIN, next="/ui/batches")
    assert right.status_code == 303 and right.headers["location"] == "/ui/batches"
    page = http.get("/ui/batches").text
    assert theirs in page and "admin · every client" in page
    assert http.get(f"/ui/batches/acme/{theirs}").status_code == 200


def test_a_client_login_sees_that_client_only(http: httpx.Client, store: Store, acme: str, drain):
    token = token_for(store, acme)
    ours = batch_id_of(
        http.post(
            "/m2/acme/v2/profile/batchUpdate",
            content=b"batch=thirdPartyId,a\nsame-id,acme\n",
            headers={"Authorization": f"Bearer {token}"},
        )
    )
    theirs = batch_id_of(submit(http, b"batch=thirdPartyId,a\nsame-id,demo\nonly-demo,1\n"))
    drain()
    assert log_in(http, client="acme", token="wrong").status_code == 403
    assert log_in(http, client="demo", token=token).status_code == 403
    assert log_in(http, client=acme, token=token).status_code == 303
    listed = http.get("/ui/batches").text
    assert ours in listed and theirs not in listed and "demo" not in listed
    assert "demo" not in http.get("/ui").text
    made_up = theirs.replace("-", "-9", 1)
    answers = [http.get(f"/ui/batches/demo/{b}") for b in (theirs, made_up)]
    assert [a.status_code for a in answers] == [404, 404]
    assert answers[0].text.replace(theirs, "ID") == answers[1].text.replace(made_up, "ID")
    assert http.get(f"/ui/batches/demo/{theirs}/failed.csv").status_code == 404
    assert http.get("/ui/batches", params={"client": "demo"}).status_code == 404
    mine = http.get("/ui/profiles", params={"client": "acme", "id": "same-id"}).text
    assert ">acme<" in mine and ">demo<" not in mine
    other = http.get("/ui/profiles", params={"client": "demo", "id": "only-demo"})
    assert other.status_code == 404 and "only-demo" not in other.text.replace("%2F", "")
    assert upload(http, b"batch=thirdPartyId,a\nx,1\n", client="demo").status_code == 404


def test_revoking_the_token_or_disabling_the_client_ends_the_session(
    http: httpx.Client, store: Store, acme: str
):
    assert log_in(http, client=acme, token=token_for(store, acme)).status_code == 303
    assert http.get("/ui").status_code == 200
    tokens.revoke(store, clients.get(store, acme), now_ms())
    assert http.get("/ui").status_code == 303
    assert log_in(http, client=acme, token=token_for(store, acme)).status_code == 303
    clients.change(store, acme, disabled=True)
    assert http.get("/ui").status_code == 303


def test_a_tampered_session_cookie_is_ignored(http: httpx.Client, acme: str):
    assert log_in(http, password=ADMIN).status_code == 303
    cookie = http.cookies["profilebase_session"]
    http.cookies.clear()
    http.cookies.set("profilebase_session", "x" + cookie, path="/ui")
    assert http.get("/ui").status_code == 303


def test_logging_in_and_out_needs_the_forms_csrf_token(http: httpx.Client, acme: str):
    refused = http.post("/ui/login", data={"password": ADMIN})
    assert refused.status_code == 403 and "reload the page" in refused.text
    assert http.get("/ui").status_code == 303
    assert log_in(http, password=ADMIN).status_code == 303
    assert http.post("/ui/logout", data={"csrf": "forged"}).status_code == 403
    assert http.get("/ui").status_code == 200
    token = csrf_of(http, "/ui")
    out = http.post("/ui/logout", data={"csrf": token})
    assert out.status_code == 303 and http.get("/ui").status_code == 303


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/ui\\@evil"])
def test_after_login_the_dashboard_never_sends_you_elsewhere(
    http: httpx.Client, acme: str, target: str
):
    response = log_in(http, password=ADMIN, next=target)
    assert response.status_code == 303 and response.headers["location"] == "/ui"


def test_failed_logins_slow_down_the_address(http: httpx.Client, acme: str):
    """More than auth_failures_per_minute (5 here) failures: 429, as for tokens."""
    codes = [log_in(http, password="wrong password!").status_code for _ in range(7)]
    assert codes == [403] * 6 + [429]
    assert log_in(http, password=ADMIN).status_code == 429


def test_changing_the_admin_password_ends_admin_sessions(store: Store, settings: Settings):
    from profilebase.server.web.sessions import Sessions

    sessions = Sessions("k" * 32)
    session = {"csrf": "t", "admin": sessions.admin_fingerprint(ADMIN)}
    clients.create(store, "acme", True, now_ms())
    now = now_ms()
    seen = find_viewer(store, session, sessions.admin_fingerprint(ADMIN), now)
    assert seen is not None and seen.role == "admin"
    assert find_viewer(store, session, sessions.admin_fingerprint("another password"), now) is None
    assert find_viewer(store, session, None, now) is None


def test_without_an_admin_password_the_admin_login_says_how_to_turn_it_on(
    database_url: str, store: Store, acme: str
):
    from conftest import LiveServer

    with LiveServer(Settings(database=database_url, workers=0), store, workers=0) as server:
        page = httpx.get(f"{server.url}/ui/login").text
        assert "Admin login is off: set <code>admin_password</code>" in page
        attempt = httpx.Client(base_url=server.url)
        assert log_in(attempt, password="anything at all").status_code == 403
        attempt.close()
