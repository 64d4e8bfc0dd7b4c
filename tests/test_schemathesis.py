"""schemathesis sends requests generated from /openapi.json to a live server: no reply is a
5xx, and every reply matches the document (declared status code, content type and schema)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest
from helpers import batch_id_of, submit
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)


@schemathesis.serializer("application/x-ndjson")
def json_lines(ctx: Any, value: Any) -> bytes:
    """An import body: each generated object as one JSON line (a list, one line each)."""
    values = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(item).encode() + b"\n" for item in values)


#: Data that fits the document must get a reply the document declares, in shape too.
POSITIVE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
#: Data that breaks it must be refused with a declared status, never a 5xx.
NEGATIVE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]
#: Examples per operation and pass; hypothesis stops sooner when a pass has fewer.
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 10}


def known_values(http: httpx.Client, drain) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A batch with one good and one failed row, so that status, failures, fetch and delete
    have something to find."""
    accepted = submit(http, b"batch=pcId,tier\nknown-1,gold\n1.2.3,bad\n")
    drain()
    batch_id = batch_id_of(accepted)
    return {"client": "demo", "batch_id": batch_id, "batchId": batch_id, "pc_id": "known-1"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_reply_matches_the_openapi_document(http: httpx.Client, live_server, drain):
    """Three passes per operation — every parameter generated, the demo client, the demo
    client with a known batch and profile — with data that fits the document and data that
    does not. SQLite only: the replies' shapes do not depend on the backend, and the run
    stays under a minute."""
    known = known_values(http, drain)
    passes = {"generated": {}, "demo": {"client": "demo"}, "known": known}
    schema = schemathesis.openapi.from_url(f"{live_server.url}/openapi.json")
    found: dict[str, str] = {}
    seen: Counter[tuple[str, int]] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        done: list[tuple[dict[str, str], dict[str, str]]] = []
        for name, fixed in passes.items():
            path, query = given_in(operation, "path", fixed), given_in(operation, "query", fixed)
            if (path, query) in done:  # the operation has no parameter this pass fixes
                continue
            done.append((path, query))
            for mode, checks in (
                (GenerationMode.POSITIVE, POSITIVE_CHECKS),
                (GenerationMode.NEGATIVE, NEGATIVE_CHECKS),
            ):
                strategy = operation.as_strategy(
                    generation_mode=mode, path_parameters=path, query=query
                )
                try:
                    explore(strategy, checks, live_server.url, seen, EXAMPLES[mode])
                except Unsatisfiable:  # nothing in this operation can be made invalid
                    pass
                except Exception as exc:  # every operation's first failure, reported together
                    found[f"{operation.label} ({name}, {mode})"] = str(exc)[:1500]
        # The document's own examples, for the demo client: they must be taken as they are.
        fixed = passes["demo"]
        for strategy in operation.get_strategies_from_examples(
            path_parameters=given_in(operation, "path", fixed),
            query=given_in(operation, "query", fixed),
        ):
            try:
                explore(strategy, POSITIVE_CHECKS, live_server.url, seen, 1)
            except Exception as exc:
                found[f"{operation.label} (example)"] = str(exc)[:1500]
    print("replies by operation and status:", dict(sorted(seen.items())))
    assert not found, "\n\n".join(f"{label}:\n{text}" for label, text in found.items())


def explore(strategy: Any, checks: list[Any], base_url: str, seen: Counter, examples: int) -> None:
    """Send up to ``examples`` cases of ``strategy``; raise on the first reply a check refuses."""

    @given(case=strategy)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        response = case.call(base_url=base_url, timeout=30)
        seen[(case.operation.label, response.status_code)] += 1
        case.validate_response(response, checks=checks)

    check()


def given_in(operation: Any, location: str, fixed: dict[str, str]) -> dict[str, str]:
    """The fixed values the operation has a parameter for, in ``location``."""
    names = {
        p["name"] for p in operation.definition.raw.get("parameters", []) if p["in"] == location
    }
    return {name: value for name, value in fixed.items() if name in names}


def test_a_malformed_multipart_body_is_400_not_500(http: httpx.Client):
    """Found by schemathesis: a multipart part whose headers cannot be parsed is refused with
    Target's XML and a sentence saying what to send, not an internal error."""
    boundary = "b0undary"
    body = f"--{boundary}\r\nbroken header\r\r\n\r\nx\r\n--{boundary}--\r\n".encode()
    response = http.post(
        "/m2/demo/v2/profile/batchUpdate",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/xml")
    assert "multipart body is malformed" in response.text
