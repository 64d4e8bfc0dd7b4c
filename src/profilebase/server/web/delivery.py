"""The profile side of Target's Delivery API: ``POST /rest/v1/delivery?client=…&sessionId=…``.

A page call names a visitor (``id.tntId``, ``id.thirdPartyId``, and as aliases its
Experience Cloud ID ``id.marketingCloudVisitorId`` and ``id.customerIds``) and may carry
``profileParameters`` in each part of the request. profilebase decides no offers:
it creates or links the visitor's profile, applies the parameters, and answers
with Target's envelope (``status``, ``requestId``, ``client``, ``id``, and the
``execute``/``prefetch`` parts echoing each mbox and view with no ``options``). A call without
a tntId gets a new one in Target's format.

Nothing in the reply names an edge: no ``edgeHost`` and no location hint in new
tntIds. Adobe's SDKs send every later call of a visitor to
``mboxedge<hint>.tt.omtrdc.net`` when they find a hint in either (``edgeHost``
``127.0.0.1:8080`` reads as hint ``127``); without one they keep the server they
were configured with, which is the right one: profilebase has no edges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from profilebase.errors import BadRequest
from profilebase.ids import check_id
from profilebase.models import KeyKind
from profilebase.server.randomness import random_bytes
from profilebase.server.storage.base import Visit
from profilebase.server.storage.links import customer_id_key, ecid_key
from profilebase.server.web.context import (
    ClientContext,
    client_named_without_token,
    json_body,
    read_body,
    scalar_text,
)
from profilebase.server.web.openapi import (
    CLIENT_FROM_OUTSIDE,
    JSON,
    TARGET,
    ApiRoute,
    error_replies,
    operation,
    query,
    query_param,
    ref,
    reply,
)
from profilebase.server.web.responses import JsonResponse

MAX_PARAMETERS = 50
MAX_NAME_LENGTH = 128
MAX_VALUE_LENGTH = 256
MAX_MBOXES = 50
MAX_ECID_LENGTH = 128
MAX_CUSTOMER_IDS = 50
MAX_CUSTOMER_ID_LENGTH = 128
MAX_INTEGRATION_CODE_LENGTH = 50
AUTHENTICATED_STATES = {"unknown", "authenticated", "logged_out"}
SESSION_ID = re.compile(r"[!-~]{1,128}")
SESSION_ID_FORBIDDEN = set(" ?{}/")
#: Where profileParameters may appear, in the order they apply (a later value wins).
PARTS = [
    ("execute", "pageLoad"),
    ("execute", "mboxes"),
    ("prefetch", "pageLoad"),
    ("prefetch", "views"),
    ("prefetch", "mboxes"),
    (None, "notifications"),
]


@dataclass(frozen=True)
class DeliveryCall:
    """What a Delivery request says about its visitor."""

    tnt_id: str | None
    third_party_id: str | None
    values: dict[str, str]
    #: Alias keys of its ECID and customerIds.
    aliases: tuple[str, ...] = ()


def new_tnt_id() -> str:
    """A new tntId: 32 hex digits, without the optional ``.<hint>_<n>`` location suffix."""
    return random_bytes.hex_id()


async def delivery(request: Request, context: ClientContext) -> Response:
    """Create or link the visitor's profile, apply its parameters, answer Target's envelope."""
    client, limits = context.client, context.limits
    check_session_id(query(request, "sessionId"))
    body = await read_body(request, limits.max_delivery_bytes, "max_delivery_bytes")
    payload = as_object(json_body(body, "The request body is not valid JSON."), "the request body")
    call = parse_call(payload)
    tnt_id = call.tnt_id or new_tnt_id()
    request_id = payload.get("requestId")
    if not isinstance(request_id, str) or not request_id:
        request_id = str(random_bytes.uuid4())
    now = context.clock()
    await context.write_now(
        context.store.visit,
        client.id,
        Visit(tnt_id, call.third_party_id, call.values, request_id, call.aliases),
        now,
        limits.max_profile_bytes,
        limits.expire_before_ms(now),
    )
    identity = dict(as_object(payload.get("id"), "id"))
    identity["tntId"] = tnt_id
    reply: dict[str, Any] = {
        "status": 200,
        "requestId": request_id,
        "client": client.code,
        "id": identity,
        **echo(payload),
    }
    return JsonResponse(reply)


def check_session_id(session_id: str | None) -> None:
    if not session_id:
        raise BadRequest(
            "The sessionId query parameter is missing: add &sessionId=<a stable id of the "
            "visitor's session>."
        )
    if not SESSION_ID.fullmatch(session_id) or SESSION_ID_FORBIDDEN & set(session_id):
        raise BadRequest(
            "sessionId must be 1 to 128 printable characters without spaces, '?', '{', '}' or '/'."
        )


def as_object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a JSON object.")
    return value


def as_list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"{where} must be a JSON array.")
    return value


def parse_call(payload: dict[str, Any]) -> DeliveryCall:
    """The visitor's ids and every profileParameter, validated as Target documents."""
    identity = as_object(payload.get("id"), "id")
    tnt_id = optional_id(identity, "tntId", KeyKind.PC_ID)
    third_party_id = optional_id(identity, "thirdPartyId", KeyKind.THIRD_PARTY_ID)
    ecid = plain_text(
        identity.get("marketingCloudVisitorId"), "id.marketingCloudVisitorId", MAX_ECID_LENGTH
    )
    aliases = [ecid_key(ecid)] if ecid else []
    aliases += customer_id_keys(identity.get("customerIds"))
    values: dict[str, str] = {}
    for section, part in PARTS:
        container = payload if section is None else as_object(payload.get(section), section)
        where = part if section is None else f"{section}.{part}"
        if part == "pageLoad":
            items = [container.get(part)] if part in container else []
        else:
            items = as_list(container.get(part), where)
            if part == "mboxes" and len(items) > MAX_MBOXES:
                raise BadRequest(f"{where}: size must be between 0 and {MAX_MBOXES}.")
        for index, item in enumerate(items):
            label = where if part == "pageLoad" else f"{where}[{index}]"
            item = as_object(item, label)
            values.update(profile_parameters(item.get("profileParameters"), label))
    return DeliveryCall(tnt_id, third_party_id, values, tuple(dict.fromkeys(aliases)))


def optional_id(identity: dict[str, Any], name: str, kind: KeyKind) -> str | None:
    """``id.<name>`` if given, checked by the id rule every endpoint applies."""
    value = identity.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"id.{name} must be a string.")
    problem = check_id(kind, value)
    if problem:
        raise BadRequest(f"Invalid id.{name}: {problem}.")
    return value


def plain_text(value: Any, where: str, longest: int, required: bool = False) -> str | None:
    """An id given as text: at most ``longest`` characters, no control characters."""
    if value is None or value == "":
        if required:
            raise BadRequest(f"{where} is missing: give it as a non-empty string.")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a string.")
    if len(value) > longest:
        raise BadRequest(f"{where} is {len(value)} characters long; at most {longest}.")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise BadRequest(f"{where} contains a control character (such as NUL or CR); remove it.")
    return value


def customer_id_keys(raw: Any) -> list[str]:
    """The alias keys of ``id.customerIds``: at most 50 ``{id, integrationCode,
    authenticatedState}``, as Target's Delivery API defines them."""
    entries = as_list(raw, "id.customerIds")
    if len(entries) > MAX_CUSTOMER_IDS:
        raise BadRequest(f"id.customerIds: size must be between 0 and {MAX_CUSTOMER_IDS}.")
    keys = []
    for index, entry in enumerate(entries):
        where = f"id.customerIds[{index}]"
        entry = as_object(entry, where)
        identifier = plain_text(entry.get("id"), f"{where}.id", MAX_CUSTOMER_ID_LENGTH, True)
        code = plain_text(
            entry.get("integrationCode"),
            f"{where}.integrationCode",
            MAX_INTEGRATION_CODE_LENGTH,
            True,
        )
        state = entry.get("authenticatedState")
        if state is not None and (not isinstance(state, str) or state not in AUTHENTICATED_STATES):
            raise BadRequest(
                f"{where}.authenticatedState must be one of "
                f"{', '.join(sorted(AUTHENTICATED_STATES))}."
            )
        keys.append(customer_id_key(str(code), str(identifier)))
    return keys


def profile_parameters(raw: Any, where: str) -> dict[str, str]:
    """One profileParameters object; an empty value leaves the attribute unchanged."""
    parameters = as_object(raw, f"{where}.profileParameters")
    if len(parameters) > MAX_PARAMETERS:
        raise BadRequest(
            f"{where}.profileParameters has {len(parameters)} parameters; at most "
            f"{MAX_PARAMETERS} are allowed."
        )
    values = {}
    for name, value in parameters.items():
        if not name.strip():
            raise BadRequest(f"{where}.profileParameters has a blank parameter name.")
        if len(name) > MAX_NAME_LENGTH:
            raise BadRequest(
                f"Profile parameter name {name[:40]!r}… is {len(name)} characters long; at most "
                f"{MAX_NAME_LENGTH}."
            )
        if name.startswith("profile."):
            raise BadRequest(
                f"Profile parameter {name!r} must not start with 'profile.': write "
                f"{name.removeprefix('profile.')!r}."
            )
        if value is None:
            raise BadRequest(f"Profile parameter {name!r}: the value cannot be null.")
        text = scalar_text(value)
        if text is None:
            raise BadRequest(f"Profile parameter {name!r}: the value must be a string.")
        if len(text) > MAX_VALUE_LENGTH:
            raise BadRequest(
                f"Profile parameter {name!r} has a value of {len(text)} characters; at most "
                f"{MAX_VALUE_LENGTH}."
            )
        if text:
            values[name] = text
    return values


def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """The ``execute``/``prefetch``/``notifications`` parts of the reply, without content."""
    out: dict[str, Any] = {}
    for section in ("execute", "prefetch"):
        asked = payload.get(section)
        if asked is None:
            continue
        part: dict[str, Any] = {}
        if "pageLoad" in asked:
            part["pageLoad"] = {}
        if asked.get("views") is not None:
            part["views"] = [
                echo_item(view, position, False) for position, view in enumerate(asked["views"])
            ]
        if asked.get("mboxes") is not None:
            part["mboxes"] = [
                echo_item(mbox, position, True) for position, mbox in enumerate(asked["mboxes"])
            ]
        out[section] = part
    if payload.get("notifications") is not None:
        out["notifications"] = [
            {"id": item["id"]} if item is not None and "id" in item else {}
            for item in payload["notifications"]
        ]
    return out


def echo_item(item: dict[str, Any] | None, position: int, with_index: bool) -> dict[str, Any]:
    """An mbox (its ``index``, by default its position, and ``name``) or a view (``name``),
    with an empty list of ``options``: no offer. Adobe's Python SDK reads ``options`` of
    every mbox (``getAttributes``) and fails where it is missing. A ``null`` item reads as
    an empty one, as ``parse_call`` reads it."""
    item = as_object(item, "")
    out: dict[str, Any] = {}
    if with_index:
        out["index"] = item.get("index", position)
    if "name" in item:
        out["name"] = item["name"]
    out["options"] = []
    return out


OPERATION = operation(
    TARGET,
    "Delivery API, profile side: create or link the visitor's profile and apply its "
    "profileParameters; no offers are decided. No credentials, as Target's (page "
    "calls come from browsers), even for a client whose profile APIs require a "
    "token.",
    [
        *CLIENT_FROM_OUTSIDE,
        query_param(
            "sessionId",
            "1-128 printable characters, no space, ?, {, } or /.",
            # SESSION_ID and SESSION_ID_FORBIDDEN as one pattern.
            {"type": "string", "pattern": "^[!-.0->@-z|~]{1,128}$"},
            required=True,
        ),
    ],
    {
        "200": reply("Target's envelope, no content.", JSON, ref("DeliveryResponse")),
        **error_replies(JSON, 400, 403, 404, 413, 507),
    },
    requestBody={
        "required": True,
        "content": {
            JSON: {
                "schema": ref("DeliveryRequest"),
                "example": {
                    "id": {"thirdPartyId": "crm-1"},
                    "execute": {"pageLoad": {"profileParameters": {"tier": "gold"}}},
                },
            }
        },
    },
)

routes = [
    ApiRoute(
        "/rest/v1/delivery",
        delivery,
        methods=["POST"],
        # No token: "There is no authentication for Target Delivery APIs" (even for a client
        # whose profile APIs require one); an unknown or disabled client is still refused.
        context=client_named_without_token,
        operation=OPERATION,
    )
]
