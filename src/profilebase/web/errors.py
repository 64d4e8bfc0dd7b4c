"""One place that turns errors into responses, in the format of the endpoint that failed.

``/m2/...`` endpoints answer in Target's XML (``success=false`` and a message),
everything else in JSON ``{"status", "message"}``. Unexpected exceptions are
logged with their traceback and answered with a short 500, never a traceback.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from profilebase.errors import ProfilebaseError
from profilebase.web import xml

log = logging.getLogger("profilebase.web")


def error_response(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    path = request.url.path
    if path.startswith("/m2/"):
        return xml.xml_response(
            xml.rejected(message, with_batch_status=path.endswith("/batchUpdate")),
            status=status,
            headers=headers,
        )
    return JSONResponse({"status": status, "message": message}, status_code=status, headers=headers)


async def profilebase_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProfilebaseError)
    return error_response(request, exc.status, exc.message, exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail
    if exc.status_code == 404:
        message = f"No endpoint at {request.url.path}; see the README for the API's paths."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    return error_response(request, exc.status_code, str(message), dict(exc.headers or {}))


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, 500, "Internal server error; the server log has the details.")
