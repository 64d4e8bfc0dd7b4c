"""How every profilebase process logs: one line per event, as text or as JSON.

``configure`` sets the root logger up once per process (``serve``, ``worker`` and
each worker process it spawns). Every line carries the id of the request it
belongs to, if any: the web layer sets ``REQUEST_ID`` for the task serving a
request, and a filter copies it onto each record (``-`` outside a request). The
JSON form puts the record's ``extra`` fields (method, route, status, batch id...)
beside ``message`` as keys of their own, for machines to read.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

#: The log formats ``--log-format`` (``log_format``) accepts.
FORMATS = ("text", "json")
#: Lines for people: time, level, logger, request id, message.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
#: The fields every JSON line has; ``extra`` fields are added after them.
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s"

#: The id of the request the current task serves, or None.
REQUEST_ID: ContextVar[str | None] = ContextVar("profilebase_request_id", default=None)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record: the current request's, or ``-``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get() or "-"
        return True


def formatter(form: str) -> logging.Formatter:
    """The formatter of a log format (one of ``FORMATS``)."""
    if form == "json":
        return JsonFormatter(
            JSON_FIELDS,
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )
    return logging.Formatter(TEXT_FORMAT)


def configure(level: str | int, form: str = "text") -> None:
    """Send every log line of this process to stderr, in ``form``, from ``level`` up.

    Replaces the root logger's handlers, so that calling it again (a spawned worker
    process, a test) does not print each line twice.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter(form))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
