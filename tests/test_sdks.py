"""Adobe's own Delivery SDKs, configured only with their documented options, against a real
server on loopback: every call lands in the right profile and stays on profilebase.

The Python SDK (target-python-sdk) is a dev dependency. The Node SDK
(@adobe/target-nodejs-sdk) is installed with npm into .cache/node-sdk by the first test
that needs it and driven by tests/sdk/node_sdk_session.js; it runs wherever node and npm
exist, and is skipped, saying so, only where they do not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from profilebase.models import now_ms
from profilebase.server import clients
from profilebase.server.storage import Store

ROOT = Path(__file__).resolve().parent.parent
NODE_SDK = "@adobe/target-nodejs-sdk"
NODE_SDK_VERSION = "2.4.3"
NODE_PREFIX = ROOT / ".cache" / "node-sdk"
NODE_SCRIPT = ROOT / "tests" / "sdk" / "node_sdk_session.js"
PYTHON_SCRIPT = ROOT / "tests" / "sdk" / "python_sdk_session.py"
ORG_ID = "65453EA95E702E8C0A495E27@AdobeOrg"


@pytest.fixture
def acme(store: Store) -> None:
    """The client the SDKs name; they send only imsOrgId, so it carries that organization id.
    The default client `demo` exists beside it and must receive nothing."""
    clients.create(store, "acme", False, now_ms())
    clients.change(store, "acme", org_id=ORG_ID)


def attributes_of(http: httpx.Client, path: str, client: str = "acme") -> dict[str, str] | None:
    response = http.get(path, params={"client": client})
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return {name: a["value"] for name, a in response.json()["profileAttributes"].items()}


def run_session(command: list[str], port: int, **env: str) -> dict[str, Any]:
    """Run an SDK script against the server; its JSON result."""
    started = time.monotonic()
    ran = subprocess.run(
        [*command, f"127.0.0.1:{port}", "acme", ORG_ID],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    print(f"{Path(command[-1]).name}: {time.monotonic() - started:.1f} s")
    assert ran.returncode == 0, ran.stderr
    result: dict[str, Any] = json.loads(ran.stdout)
    return result


def check_the_session(
    http: httpx.Client, result: dict[str, Any], third_party_id: str, favorite: str, port: int
):
    """Every call of the session went to this server, for acme (named by imsOrgId alone),
    and landed in one profile that either id finds; no reply gave the SDK a location hint."""
    assert result["client"] == "acme"
    assert result["hosts"] and set(result["hosts"]) == {f"http://127.0.0.1:{port}"}
    assert result["locationHintCookie"] == [None] * len(result["locationHintCookie"])
    tnt_id = result["tntIds"][0]
    assert result["tntIds"] == [tnt_id] * 5 and result["thirdPartyId"] == third_party_id
    assert result["attributes"] == {}
    expected = {
        "favorite": favorite,
        "heroSeen": "yes",
        "view": "home",
        "visits": "2",
        "notified": "yes",
        "signedIn": "yes",
    }
    assert attributes_of(http, f"/rest/v1/profiles/{tnt_id}") == expected
    assert attributes_of(http, f"/rest/v1/profiles/thirdPartyId/{third_party_id}") == expected
    assert attributes_of(http, f"/rest/v1/profiles/{tnt_id}", client="demo") is None


# -- the Node SDK ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def node_sdk() -> Path:
    """node_modules with the pinned Node SDK, installed by npm once (kept between runs)."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are not installed: the Node SDK test needs both")
    modules = NODE_PREFIX / "node_modules"
    installed = modules / NODE_SDK / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != NODE_SDK_VERSION:
        NODE_PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--prefix",
                str(NODE_PREFIX),
                "--no-audit",
                "--no-fund",
                "--no-package-lock",
                f"{NODE_SDK}@{NODE_SDK_VERSION}",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return modules


def test_the_node_sdk_works_configured_only_with_its_documented_options(
    node_sdk: Path, live_server, http: httpx.Client, acme: None
):
    """getOffers (execute, prefetch, profileParameters), a second call with the SDK's own
    cookie, sendNotifications, getAttributes and a thirdPartyId link all reach acme's
    profile, and the SDK sends every call to the configured server: no location hint."""
    result = run_session(["node", str(NODE_SCRIPT)], live_server.port, NODE_PATH=str(node_sdk))
    assert result["errors"] == []
    check_the_session(http, result, "crm-node", "shoes", live_server.port)


# -- the Python SDK --------------------------------------------------------------------


def test_the_python_sdk_works_configured_only_with_its_documented_options(
    live_server, http: httpx.Client, acme: None
):
    """The same session through target-python-sdk, in a process of its own (the SDK keeps
    its first server for the whole process): every call lands in acme's profile and goes
    to the configured server."""
    result = run_session([sys.executable, str(PYTHON_SCRIPT)], live_server.port)
    assert result["locationHint"] is None
    check_the_session(http, result, "crm-python", "boots", live_server.port)
