"""The XML replies of Target's ``/m2/`` endpoints, built with escaping so they are well-formed."""

from __future__ import annotations

import re
from collections.abc import Iterable
from xml.sax.saxutils import escape

from starlette.responses import Response

from profilebase.models import Batch, FailedRow

MEDIA_TYPE = "application/xml"


#: Characters XML 1.0 does not allow in a document, even escaped.
_NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def text(value: object) -> str:
    """Escape a value for XML; characters XML cannot carry become U+FFFD."""
    return escape(_NOT_IN_XML.sub("\ufffd", str(value)))


def element(name: str, value: object | None = None) -> str:
    if value is None or value == "":
        return f"<{name}/>"
    return f"<{name}>{text(value)}</{name}>"


def document(children: Iterable[str]) -> str:
    return "<response>" + "".join(children) + "</response>"


def xml_response(
    children: Iterable[str], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(document(children), status_code=status, media_type=MEDIA_TYPE, headers=headers)


def submitted(status_url: str) -> list[str]:
    return [
        element("success", "true"),
        element("batchStatus", status_url),
        element("message", "Batch submitted for processing"),
    ]


_UPDATED_HEAD = "<response>" + element("success", "true")
_UPDATED_TAIL = element("message", "Request successfully submitted") + "</response>"


class UpdatedResponse(Response):
    """The reply to a single profile update that was applied: ``success``, the ``pcId``
    and a message, with ``headers``. Made on the event loop for every update, without
    ``xml_response``'s general path: the document's fixed parts made once, the headers
    encoded at once (``tests/test_responses.py`` compares the two)."""

    media_type = MEDIA_TYPE

    def __init__(self, pc_id: str | None, headers: dict[str, str]) -> None:
        self.status_code = 200
        self.background = None
        self.body = (_UPDATED_HEAD + element("pcId", pc_id) + _UPDATED_TAIL).encode()
        self.raw_headers = [
            *(
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in headers.items()
            ),
            (b"content-length", b"%d" % len(self.body)),
            (b"content-type", MEDIA_TYPE.encode()),
        ]


def rejected(message: str, with_batch_status: bool) -> list[str]:
    parts = [element("success", "false")]
    if with_batch_status:
        parts.append(element("batchStatus"))
    parts.append(element("message", message))
    return parts


def batch_status(batch: Batch, status: str, details: bool) -> list[str]:
    """The children of a batchStatus reply, without the failed rows (see failed_profile)."""
    parts = [
        element("batchId", batch.batch_id),
        element("status", status),
        element("batchSize", batch.batch_size),
    ]
    if details:
        counts = batch.counts
        parts += [
            element("consumedCount", counts.consumed),
            element("successfulUpdates", counts.successful),
            element("profilesNotFound", counts.not_found),
            element("failedUpdates", counts.failed),
        ]
    return parts


def failed_profile(row: FailedRow) -> str:
    return "<profile>" + element("id", row.id) + element("status", "failed") + "</profile>"
