"""Drives Adobe's target-python-sdk against a profilebase server, configured only with the
SDK's documented options. Usage: python python_sdk_session.py HOST:PORT CLIENT ORG_ID

Prints one JSON object: the ids each call's reply carried and every host the SDK sent a
request to (from its debug log). tests/test_sdks.py runs it in a process of its own: the
SDK keeps its first server in a process-wide default configuration.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from delivery_api_client import (
    ChannelType,
    Context,
    DeliveryRequest,
    ExecuteRequest,
    MboxRequest,
    MetricType,
    Notification,
    NotificationMbox,
    PrefetchRequest,
    RequestDetails,
    ViewRequest,
    VisitorId,
)
from target_python_sdk import TargetClient


class RequestsSent(logging.Handler):
    """The hosts of the SDK's "Request sent" debug records, read raw: they do not format."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.hosts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "Request sent":
            self.hosts.append(str(record.args[1]))  # type: ignore[index]


def page(**parts: object) -> DeliveryRequest:
    return DeliveryRequest(context=Context(channel=ChannelType.WEB), **parts)


def main(server_domain: str, client: str, organization_id: str) -> dict[str, object]:
    sent = RequestsSent()
    logger = logging.getLogger("adobe.target")
    logger.addHandler(sent)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    target = TargetClient.create(
        {
            "client": client,
            "organization_id": organization_id,
            "server_domain": server_domain,
            "secure": False,
        }
    )
    first = target.get_offers(
        {
            "request": page(
                execute=ExecuteRequest(
                    page_load=RequestDetails(profile_parameters={"favorite": "boots"}),
                    mboxes=[
                        MboxRequest(name="hero", index=0, profile_parameters={"heroSeen": "yes"})
                    ],
                ),
                prefetch=PrefetchRequest(
                    views=[ViewRequest(name="home", profile_parameters={"view": "home"})],
                    mboxes=[MboxRequest(name="promo", index=0)],
                ),
            )
        }
    )
    second = target.get_offers(
        {
            "request": page(
                execute=ExecuteRequest(page_load=RequestDetails(profile_parameters={"visits": "2"}))
            ),
            "target_cookie": first["target_cookie"]["value"],
        }
    )
    cookie = second["target_cookie"]["value"]
    notified = target.send_notifications(
        {
            "request": page(
                notifications=[
                    Notification(
                        id="n-1",
                        type=MetricType.DISPLAY,
                        timestamp=int(time.time() * 1000),
                        mbox=NotificationMbox(name="hero"),
                        profile_parameters={"notified": "yes"},
                    )
                ]
            ),
            "target_cookie": cookie,
        }
    )
    attributes = target.get_attributes(["hero"], {"request": page(), "target_cookie": cookie})
    linked = target.get_offers(
        {
            "request": page(
                id=VisitorId(third_party_id="crm-python"),
                execute=ExecuteRequest(
                    page_load=RequestDetails(profile_parameters={"signedIn": "yes"})
                ),
            ),
            "target_cookie": cookie,
        }
    )
    last = target.get_offers(
        {
            "request": page(execute=ExecuteRequest(page_load=RequestDetails())),
            "target_cookie": linked["target_cookie"]["value"],
        }
    )
    replies = [first, second, notified, linked, last]
    return {
        "tntIds": [reply["response"].id.tnt_id for reply in replies],
        "thirdPartyId": linked["response"].id.third_party_id,
        "client": first["response"].client,
        "locationHintCookie": [reply.get("target_location_hint_cookie") for reply in replies],
        "locationHint": target.config.get("target_location_hint"),
        "attributes": attributes.as_object(),
        "hosts": sent.hosts,
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
