"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

Upload a batch with failing rows through the form, watch its progress bar reach 100% as a
worker applies it (the page refreshes by itself), open the failed rows, download them, look a
profile up, and save a screenshot of each page under the test's tmp output. Hostile values
must never run as script.

Chromium comes from Debian (`apt-get install chromium`, which .ci/run does); Playwright's
own browser download is never used. Where /usr/bin/chromium is missing the test is skipped
with a message saying so. It runs on SQLite only: the pages read through the same store
methods whose both backends tests/test_dashboard.py covers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveServer

from profilebase.server.settings import Settings
from profilebase.server.storage import Store, open_store
from profilebase.server.web.app import prepare
from profilebase.server.worker import Worker

CHROMIUM = Path("/usr/bin/chromium")
#: Headless, no sandbox (CI runs as root), and none of the background traffic a closed
#: network refuses.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS = '<img src=x onerror="window.__xss = 1">'
BODY = (
    b"batch=thirdPartyId,tier,city\n"
    b"crm-1,gold,M%C3%BCnchen\n"
    b"crm-2,silver,%3Cimg%20src%3Dx%20onerror%3D%22window.__xss%20%3D%201%22%3E\n"
    b"crm-3,bronze,Z%C3%BCrich,extra\n"
    b"crm%2B4,platinum,Paris\n"
    b"crm-5,gold,Berlin\n"
)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            "Chromium is not installed at /usr/bin/chromium: install Debian's package as root "
            "(apt-get install -y chromium; .ci/run does) to run the browser test"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=FLAGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Settings, Store, LiveServer]]:
    settings = Settings(database=f"sqlite:///{tmp_path}/browser.db", workers=0, unit_rows=2)
    store = open_store(settings.database)
    prepare(store, settings)
    with LiveServer(settings, store, workers=0) as server:
        yield settings, store, server
    store.close()


@pytest.mark.slow
def test_a_batch_seen_through_the_dashboard(browser: Any, world: Any, tmp_path: Path):
    from playwright.sync_api import expect

    settings, store, server = world
    shots = tmp_path / "screenshots"
    shots.mkdir()
    dialogs: list[str] = []
    page = browser.new_page(accept_downloads=True)
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    # 1. The root leads to the open dashboard, which says it is open.
    page.goto(server.url + "/")
    assert page.url == server.url + "/ui"
    expect(page.locator("#open-notice")).to_contain_text("no client requires authorization")
    shot("1-overview-empty")

    # 2. Upload a batch with failing rows through the form.
    page.goto(server.url + "/ui/batches")
    page.set_input_files(
        "#upload input[name=batch]",
        files=[{"name": "batch.txt", "mimeType": "text/plain", "buffer": BODY}],
    )
    page.click("#upload button[type=submit]")
    page.wait_for_url("**/ui/batches/demo/demo-*")
    expect(page.locator("#batch-state")).to_have_text("queued")
    expect(page.locator("#batch-live .percent")).to_have_text("0%")
    shot("2-batch-queued")

    # 3. A worker applies it; the page follows by itself, without a reload.
    page.evaluate("window.__notReloaded = true")
    Worker(store, settings, metrics=server.server.config.app.state.metrics).run(until_idle=True)
    expect(page.locator("#batch-live .percent")).to_have_text("100%", timeout=20_000)
    expect(page.locator("#batch-state")).to_have_text("complete")
    assert page.evaluate("window.__notReloaded") is True
    expect(page.locator("#count-failed")).to_have_text("2")
    expect(page.locator("#failures tbody tr")).to_have_count(2)
    expect(page.locator("#failures")).to_contain_text("thirdPartyId must not contain '+'")
    shot("3-batch-complete")

    # 4. Download the failed rows, ready to fix and push again.
    with page.expect_download() as info:
        page.click("#download-failed")
    download = info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    rows = list(csv.reader(io.StringIO(saved.read_text())))
    assert rows[0] == ["thirdPartyId", "tier", "city", "reason"]
    assert [row[0] for row in rows[1:]] == ["crm-3", "crm+4"]

    # 5. The batch list shows it done; the overview counts its rows.
    page.goto(server.url + "/ui/batches")
    expect(page.locator("#batch-list .percent").first).to_have_text("100%")
    shot("4-batches")
    page.goto(server.url + "/ui")
    expect(page.locator("#overview-live .summary")).to_contain_text("3 applied, 2 failed")
    shot("5-overview")

    # 6. Look a profile up; a hostile value shows as text and never runs.
    page.goto(server.url + "/ui/profiles")
    page.select_option("#profile-lookup select[name=kind]", "thirdPartyId")
    page.fill("#profile-lookup input[name=id]", "crm-2")
    page.click("#profile-lookup button[type=submit]")
    expect(page.locator("#attributes")).to_contain_text(XSS)
    expect(page.locator("#attributes")).to_contain_text("silver")
    shot("6-profile")
    page.click("#attributes a >> nth=0")
    page.wait_for_url("**/ui/batches/demo/demo-*")
    expect(page.locator("#batch-state")).to_have_text("complete")
    assert page.evaluate("window.__xss") is None and dialogs == []
    print(f"\nscreenshots in {shots}")
    page.close()
