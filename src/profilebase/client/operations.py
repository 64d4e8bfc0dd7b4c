"""What an operator does with a client's data on a profilebase server: export, import,
delete profiles, list and cancel batches. A mixin of ``profilebase.Client``.

Export and delete use the profile routes beside Target's (``/rest/v1/profiles``);
the others use profilebase's extensions under ``/profilebase/v1``. None of them
exists on Adobe Target: they are refused before anything is sent there.
"""

from __future__ import annotations

import os
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import httpx

from profilebase.client.imports import (
    FIRST_PART_ROWS,
    PART_ROWS,
    ImportFailure,
    ImportResult,
    Part,
    ahead,
    split,
)
from profilebase.client.replies import BatchStatus, ServerFailure, parse_batch_status_json
from profilebase.client.retry import RetryPolicy
from profilebase.errors import ClientError, RemoteRejected, RemoteUnavailable
from profilebase.models import KeyKind

#: Reply header of a batch export: profiles without an id of the key (export.py on the server).
UNKEYED_HEADER = "X-Profilebase-Unkeyed-Profiles"


def quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    bytes_written: int
    #: Profiles the batch file has no row for (no id of its key); 0 for JSON lines.
    unkeyed: int


@dataclass(frozen=True)
class Cancelled:
    """A batch after ``cancel_batch``: its status, and the rows this cancel stopped."""

    status: BatchStatus
    rows_cancelled: int
    #: True when the batch had been cancelled before: nothing changed.
    already: bool


class Operations:
    """Export, import, delete and batch control over HTTP (profilebase only)."""

    client: str
    base_url: str
    http: httpx.Client
    retry: RetryPolicy
    sleep: Callable[[float], None]

    # Provided by Client.
    def request(
        self, method: str, url: str, *, stream: bool = False, **kwargs: Any
    ) -> httpx.Response:
        raise NotImplementedError

    @property
    def is_target(self) -> bool:
        raise NotImplementedError

    def server_info(self, refresh: bool = False) -> Any:
        raise NotImplementedError

    def batch_status(self, batch: Any) -> BatchStatus:
        raise NotImplementedError

    def failed_rows(self, batch_id: str) -> list[ServerFailure]:
        raise NotImplementedError

    def interval(self) -> float:
        raise NotImplementedError

    def _profilebase_only(self, what: str) -> None:
        if self.is_target:
            raise ClientError(f"Adobe Target has no {what}: it is a profilebase extension.")

    def _extension(self, tail: str = "") -> str:
        return f"/profilebase/v1/clients/{quote(self.client)}{tail}"

    # -- profiles ----------------------------------------------------------------------

    def export_profiles(
        self, out: IO[bytes], *, format: str = "jsonl", key: KeyKind | str | None = None
    ) -> ExportResult:
        """Write every profile of the client to ``out``: JSON lines (each profile with its
        ids), or a v2 batch file keyed by ``key`` (pcId by default).

        The body is streamed. A request that fails before the body starts is retried as
        every request is; one that breaks later raises ``RemoteUnavailable`` (``out`` then
        holds a part).
        """
        self._profilebase_only("profile export")
        self.server_info()  # authenticates first, and refuses an unknown client or token
        params = {"client": self.client, "format": format}
        if key is not None:
            params["key"] = str(KeyKind(key))
        response = self.request("GET", "/rest/v1/profiles", params=params, stream=True)
        written = 0
        try:
            unkeyed = int(response.headers.get(UNKEYED_HEADER, "0") or 0)
            for chunk in response.iter_bytes():
                out.write(chunk)
                written += len(chunk)
        except httpx.TransportError as exc:
            raise RemoteUnavailable(
                f"The export from {self.base_url} broke off after {written:,} bytes "
                f"({type(exc).__name__}); run it again."
            ) from None
        finally:
            response.close()
        return ExportResult(written, unkeyed)

    def delete_profile(self, identifier: str, *, key: KeyKind | str = KeyKind.PC_ID) -> bool:
        """Delete the profile this id finds, with all its ids; False if there was none."""
        self._profilebase_only("profile delete")
        kind = KeyKind(key)
        path = "/rest/v1/profiles/" + ("thirdPartyId/" if kind is KeyKind.THIRD_PARTY_ID else "")
        try:
            self.request("DELETE", path + quote(identifier), params={"client": self.client})
        except RemoteRejected as exc:
            if exc.http_status == 404 and exc.message.startswith("No profile found"):
                return False
            raise
        return True

    # -- batches -----------------------------------------------------------------------

    def list_batches(self, *, unfinished: bool = False, limit: int = 50) -> list[BatchStatus]:
        """The client's batches, newest first (only those not complete, if ``unfinished``)."""
        self._profilebase_only("batch list")
        response = self.request(
            "GET",
            self._extension("/batches"),
            params={"unfinished": "true" if unfinished else "false", "limit": limit},
        )
        return [parse_batch_status_json(item) for item in response.json()["batches"]]

    def cancel_batch(self, batch_id: str, *, by: str = "") -> Cancelled:
        """Cancel a batch: its rows not yet applied fail with reason ``cancelled``.

        ``by`` says who asks; the server records it with the caller's address. A batch
        that completed is refused (409, ``RemoteRejected``); cancelling it twice is not.
        """
        self._profilebase_only("batch cancel")
        response = self.request(
            "POST",
            self._extension(f"/batches/{quote(batch_id)}/cancel"),
            json={"by": by} if by else None,
        )
        data = response.json()
        return Cancelled(
            parse_batch_status_json(data),
            int(data.get("rowsCancelled", 0)),
            bool(data.get("alreadyCancelled", False)),
        )

    # -- import ------------------------------------------------------------------------

    def import_profiles(
        self,
        path: str | os.PathLike[str],
        *,
        wait: bool = True,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> ImportResult:
        """Import the profiles of a JSON-lines file (what ``export`` writes), ids, links,
        values and modified times included.

        1. The file is cut into parts of at most 10,000 lines (the first of 2,500) within
           the server's limits (``max_batch_bytes``, ``max_batch_rows``); a line too long
           for any part stops it before sending. Each line goes in its compact form
           (``profilelines``), which imports exactly as the line; parts are compressed
           with gzip when the server takes it, and the next part is read while one is sent.
        2. Parts are sent in order, part N with the idempotency key ``KEY-N``: the same
           key again sends nothing twice. Each becomes an import batch on the server.
        3. Unless ``wait`` is False, the batches are followed to the end
           (``on_progress(rows done, rows sent)``) and every failed line is reported
           with its line number in the file.
        """
        self._profilebase_only("profile import")
        info = self.server_info(refresh=True)
        prefix = idempotency_key or uuid.uuid4().hex
        sent: list[tuple[Part, str]] = []
        max_rows = min(info.limits.max_batch_rows, PART_ROWS)
        parts = split(
            path, info.limits.max_batch_bytes, max_rows, compact=True, first_rows=FIRST_PART_ROWS
        )
        for part, body, coding in ahead(parts, gzip=info.gzip_imports):
            headers = {
                "Content-Type": "application/x-ndjson",
                "Idempotency-Key": f"{prefix}-{part.number}",
            }
            if coding is not None:
                headers["Content-Encoding"] = coding
            response = self.request(
                "POST", self._extension("/imports"), content=body, headers=headers
            )
            sent.append((part, str(response.json()["batchId"])))
        rows = sum(part.rows for part, _ in sent)
        ids = tuple(batch_id for _, batch_id in sent)
        if not wait:
            return ImportResult(rows, ids, finished=False)
        statuses = self._follow([b for _, b in sent], rows, timeout, on_progress)
        failures = []
        for (part, batch_id), status in zip(sent, statuses, strict=True):
            if status.failed:
                failures += [
                    ImportFailure(part.file_line(f.line), f.id, f.reason)
                    for f in self.failed_rows(batch_id)
                ]
        return ImportResult(
            rows,
            ids,
            applied=sum(s.successful or 0 for s in statuses),
            failures=tuple(sorted(failures, key=lambda f: f.line)),
            finished=all(s.status == "complete" for s in statuses),
        )

    def _follow(
        self,
        batch_ids: list[str],
        rows: int,
        timeout: float | None,
        on_progress: Callable[[int, int], None] | None,
    ) -> list[BatchStatus]:
        """Poll the batches until each has finished (or ``timeout`` seconds passed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        statuses: dict[str, BatchStatus] = {}
        while True:
            for batch_id in batch_ids:
                if batch_id not in statuses or not statuses[batch_id].finished:
                    statuses[batch_id] = self.batch_status(batch_id)
            if on_progress is not None:
                on_progress(sum(s.applied for s in statuses.values()), rows)
            if all(s.finished for s in statuses.values()):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            self.sleep(self.interval())
        return [statuses[batch_id] for batch_id in batch_ids]
