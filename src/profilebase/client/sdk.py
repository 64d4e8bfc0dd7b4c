"""``profilebase.Client``: the Python SDK for profilebase and for Adobe Target's profile APIs.

It speaks Target's paths, so the same code runs against profilebase and against
``https://CODE.tt.omtrdc.net``. Against profilebase (detected by asking for
``/profilebase/v1/clients/{client}``) it also uses the extensions: the server's
real limits and quota, JSON status, failed rows with reasons, dry runs and
idempotency keys. It is an HTTP client only and never imports the server's code
for storage or the web.

    with profilebase.Client("http://127.0.0.1:8080", "demo") as client:
        result = client.push("crm-export.csv", errors_out="failed.csv")
        print(result.applied, len(result.failures))

Every request is retried on network errors, 429, 503 and other 5xx (see
``retry.py``); every error raised is a ``profilebase.errors.ProfilebaseError``.

With ``key_id`` and ``secret`` (a client's API key and secret) instead of a
token, the client gets a token from profilebase's token endpoint before its
first call. Target issues its tokens through Adobe IMS, which this client does
not speak, so there a token from the Target UI is needed.
"""

from __future__ import annotations

import os
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from profilebase import __version__
from profilebase.client.operations import Operations
from profilebase.client.push import (
    PartResult,
    Plan,
    PushProgress,
    PushResult,
    RowFailure,
    Table,
    map_columns,
    plan,
    records_by_number,
    table_of,
    write_errors,
)
from profilebase.client.replies import (
    TARGET_LIMITS,
    BatchStatus,
    DryRunReport,
    RemoteProfile,
    ServerFailure,
    ServerInfo,
    Submitted,
    UpdateResult,
    batch_id_from_url,
    error_message,
    parse_batch_status_json,
    parse_batch_status_xml,
    parse_dry_run,
    parse_profile,
    parse_server_info,
    parse_submitted,
    parse_update,
)
from profilebase.client.retry import RetryPolicy, is_retryable, retry_after
from profilebase.errors import (
    BatchStuck,
    ClientError,
    InputError,
    RemoteRejected,
    RemoteUnavailable,
)
from profilebase.models import KeyKind

DEFAULT_URL = "http://127.0.0.1:8080"
TARGET_HOST_SUFFIX = ".tt.omtrdc.net"
#: The single update's documented size limits: 8 KB for GET (query), 60 KB for POST.
MAX_UPDATE_QUERY = 8 * 1024
MAX_UPDATE_BODY = 60 * 1024
FAILURE_PAGE = 10_000
TARGET_FAILED = "Target reported this profile as failed (Target does not say why)"
TOKEN_PATH = "/{client}/target/authentication/token"

Batch = str | Submitted
ProgressCallback = Callable[[PushProgress], None]


def quote(value: str) -> str:
    """Percent-encode as Target asks: UTF-8, spaces as %20, nothing left unescaped."""
    return urllib.parse.quote(value, safe="")


@dataclass
class ServerFailures:
    """Rows a server failed: by input record (profilebase), or by part and id (Target)."""

    by_record: dict[int, str] = field(default_factory=dict)
    by_id: dict[tuple[int, str], str] = field(default_factory=dict)


class Client(Operations):
    """A connection to one profile server (profilebase or Target) for one client code.

    Export, import, delete and batch control come from ``Operations`` (profilebase only).
    """

    def __init__(
        self,
        base_url: str,
        client: str,
        token: str | None = None,
        *,
        key_id: str | None = None,
        secret: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        poll_interval: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``poll_interval`` defaults to 1 s for profilebase and 30 s for Target (which
        allows 50 calls a minute). ``sleep`` is how the client waits between polls and
        retries; tests pass one that runs the server's workers instead. ``key_id`` and
        ``secret`` stand in for ``token`` on profilebase (see ``authenticate``)."""
        if not client:
            raise ClientError("A client code is required (--client or PROFILEBASE_CLIENT).")
        self.base_url = base_url.rstrip("/")
        self.client = client
        self._credentials: tuple[str, str] | None = None
        if key_id is not None or secret is not None:
            self._credentials = self._check_credentials(token, key_id, secret)
        self.retry = retry or RetryPolicy()
        self.poll_interval = poll_interval
        self.sleep = sleep
        headers = {"User-Agent": f"profilebase/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            transport=transport,
        )
        self._info: ServerInfo | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- transport -------------------------------------------------------------------

    def _check_credentials(
        self, token: str | None, key_id: str | None, secret: str | None
    ) -> tuple[str, str]:
        """The (API key, secret) pair, once it is complete and usable with this server."""
        if not key_id or not secret:
            raise ClientError("An API key goes with its secret: give both --key-id and --secret.")
        if token:
            raise ClientError("Give either a token or an API key and secret, not both.")
        if self.is_target:
            raise ClientError(
                "Adobe Target issues profile API tokens through Adobe IMS, which "
                "--key-id/--secret do not speak (they use profilebase's token endpoint): "
                "pass a token generated in the Target UI with --token."
            )
        return key_id, secret

    def authenticate(self) -> str:
        """Get a profile API token with the API key and secret, and send it from now on.

        POSTs ``/{client}/target/authentication/token`` with HTTP Basic ``key:secret``
        (profilebase only). Each new token revokes the client's older ones after the
        server's ``token_grace_seconds``. Called before the first request by itself.
        """
        if self._credentials is None:
            raise ClientError("This client was given no API key and secret.")
        credentials, self._credentials = self._credentials, None
        try:
            response = self.request(
                "POST",
                TOKEN_PATH.format(client=quote(self.client)),
                params={"authorizationScope": "profile_api"},
                auth=credentials,
            )
        except BaseException:
            self._credentials = credentials
            raise
        try:
            value = response.json()["accessToken"]
        except (ValueError, KeyError, TypeError):
            raise RemoteUnavailable(
                f"The token endpoint of {self.base_url} answered without an accessToken."
            ) from None
        self.http.headers["Authorization"] = f"Bearer {value}"
        return str(value)

    def request(
        self, method: str, url: str, *, stream: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """Send a request, retrying network errors, 429 and 5xx; raise on a final failure.

        A 4xx other than 429 is ``RemoteRejected`` at once; no answer after every retry
        is ``RemoteUnavailable``. With ``stream``, a successful response's body is left
        to read (``iter_bytes``) and the caller closes it.
        """
        if self._credentials is not None:
            self.authenticate()
        attempts = self.retry.attempts
        for attempt in range(1, attempts + 1):
            try:
                auth = kwargs.pop("auth", httpx.USE_CLIENT_DEFAULT)
                response = self.http.send(
                    self.http.build_request(method, url, **kwargs), stream=stream, auth=auth
                )
                kwargs["auth"] = auth
                if stream and not response.is_success:
                    response.read()
                    response.close()
            except httpx.TransportError as exc:
                if attempt == attempts:
                    raise RemoteUnavailable(
                        f"No answer from {self.base_url} after {attempts} tries: "
                        f"{type(exc).__name__}: {exc or 'connection failed'}."
                    ) from None
                self.sleep(self.retry.backoff(attempt))
                continue
            if response.is_success:
                return response
            message = error_message(response.text, response.status_code)
            if not is_retryable(response.status_code):
                raise RemoteRejected(message, response.status_code)
            wait = retry_after(response.headers.get("retry-after"))
            if wait is not None and wait > self.retry.max_retry_after:
                raise RemoteUnavailable(
                    f"{message} (HTTP {response.status_code}; the server asks to retry in "
                    f"{wait:.0f} s, longer than this client waits)"
                )
            if attempt == attempts:
                raise RemoteUnavailable(
                    f"{message} (HTTP {response.status_code}, still after {attempts} tries)"
                )
            self.sleep(wait if wait is not None else self.retry.backoff(attempt))
        raise AssertionError("unreachable")

    # -- the server ------------------------------------------------------------------

    @property
    def is_target(self) -> bool:
        """True when the base URL is Adobe Target's (``*.tt.omtrdc.net``)."""
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        return host.endswith(TARGET_HOST_SUFFIX)

    def server_info(self, refresh: bool = False) -> ServerInfo:
        """The server's limits; profilebase says its own, Target gets its documented ones.

        The answer is kept; ``refresh`` asks again (profilebase's quota use changes).
        An unknown client, or a token the server refuses (401, 403), is raised at once:
        every other call for the client would be refused the same way.
        """
        if self._info is not None and not refresh:
            return self._info
        info = ServerInfo(TARGET_LIMITS, profilebase=False)
        if not self.is_target:
            try:
                response = self.request("GET", f"/profilebase/v1/clients/{quote(self.client)}")
                data = response.json()
                if isinstance(data, dict) and data.get("server") == "profilebase":
                    info = parse_server_info(data)
            except RemoteRejected as exc:
                if exc.http_status in (401, 403):
                    raise
                if exc.http_status == 404 and exc.message.startswith("Unknown client"):
                    raise
            except ValueError:
                pass  # not JSON: not profilebase
        self._info = info
        return info

    def _path(self, tail: str, version: int = 1) -> str:
        v2 = "/v2" if version == 2 else ""
        return f"/m2/{quote(self.client)}{v2}/profile/{tail}"

    # -- batches ---------------------------------------------------------------------

    def batch_update(
        self, body: bytes, *, version: int = 2, idempotency_key: str | None = None
    ) -> Submitted:
        """Submit a ``batch=`` body (v2 creates missing profiles, v1 only updates).

        With ``idempotency_key``, profilebase applies the body at most once however often
        it is sent; Target ignores the header.
        """
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        response = self.request(
            "POST", self._path("batchUpdate", version), content=body, headers=headers
        )
        submitted = parse_submitted(response.text)
        if not submitted.success:
            raise RemoteRejected(submitted.message or "The batch was refused.", 200)
        return submitted

    def dry_run(self, body: bytes, *, version: int = 2) -> DryRunReport:
        """Have profilebase check a body exactly as a real batch, writing nothing."""
        if not self.server_info().profilebase:
            raise ClientError(
                "A dry run on the server needs profilebase; Target would apply the batch."
            )
        response = self.request(
            "POST",
            self._path("batchUpdate", version),
            params={"dryRun": "true"},
            content=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        return parse_dry_run(response.json())

    def batch_status(self, batch: Batch) -> BatchStatus:
        """A batch's status, by id, status URL, or the ``Submitted`` that batch_update gave.

        profilebase answers with its JSON status; Target with its XML (counts included).
        """
        url = batch.batch_status_url if isinstance(batch, Submitted) else batch
        batch_id = batch_id_from_url(url) if "?" in url else url
        if self.server_info().profilebase:
            response = self.request(
                "GET",
                f"/profilebase/v1/clients/{quote(self.client)}/batches/{quote(batch_id)}",
            )
            return parse_batch_status_json(response.json())
        if "?" not in url:
            url = self._path("batchStatus") + "?batchId=" + quote(batch_id)
        separator = "&" if "?" in url else "?"
        response = self.request("GET", url + separator + "showDetails=true")
        try:
            return parse_batch_status_xml(response.text)
        except ValueError:
            raise RemoteUnavailable(
                f"The batch status reply is not XML: {response.text[:200]!r}."
            ) from None

    def interval(self) -> float:
        if self.poll_interval is not None:
            return self.poll_interval
        return 1.0 if self.server_info().profilebase else 30.0

    def wait(
        self,
        batch: Batch,
        *,
        timeout: float | None = None,
        on_status: Callable[[BatchStatus], None] | None = None,
    ) -> BatchStatus:
        """Poll until the batch is complete; raise ``BatchStuck`` if it ends stuck.

        ``timeout`` (seconds) raises ``RemoteUnavailable`` when the batch is still
        incomplete by then.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.batch_status(batch)
            if on_status is not None:
                on_status(status)
            if status.status == "stuck":
                why = f": {status.reason}" if status.reason else "."
                raise BatchStuck(f"Batch {status.batch_id} is stuck{why}")
            if status.finished:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise RemoteUnavailable(
                    f"Batch {status.batch_id} is still {status.status} after {timeout:g} s."
                )
            self.sleep(self.interval())

    def failed_rows(self, batch_id: str) -> list[ServerFailure]:
        """Every failed row of a batch with its reason (profilebase; Target lists only ids)."""
        if not self.server_info().profilebase:
            status = self.batch_status(batch_id)
            return [ServerFailure(0, i, TARGET_FAILED) for i in status.failed_ids]
        path = f"/profilebase/v1/clients/{quote(self.client)}/batches/{quote(batch_id)}/failures"
        rows: list[ServerFailure] = []
        after: int | None = 0
        while after is not None:
            page = self.request("GET", path, params={"after": after, "limit": FAILURE_PAGE}).json()
            rows += [ServerFailure(f["line"], f["id"], f["reason"]) for f in page["failures"]]
            after = page["nextAfter"]
        return rows

    # -- profiles --------------------------------------------------------------------

    def get_profile(
        self, identifier: str, *, key: KeyKind | str = KeyKind.PC_ID
    ) -> RemoteProfile | None:
        """Fetch a profile by pcId (tntId) or thirdPartyId; None if there is none."""
        kind = KeyKind(key)
        path = "/rest/v1/profiles/" + ("thirdPartyId/" if kind is KeyKind.THIRD_PARTY_ID else "")
        try:
            response = self.request("GET", path + quote(identifier), params={"client": self.client})
        except RemoteRejected as exc:
            if exc.http_status == 404 and exc.message.startswith("No profile found"):
                return None
            raise
        return parse_profile(response.json())

    def update_profile(
        self,
        identifier: str,
        attributes: Mapping[str, str],
        *,
        key: KeyKind | str = KeyKind.PC_ID,
    ) -> UpdateResult:
        """Update one existing profile through ``/m2/{client}/profile/update``.

        Sent as a POST with everything in the query string, as Segment does against
        Target, or in a form body once the query would pass Target's 8 KB; over 60 KB
        is refused here. Target does not create profiles through this endpoint.
        """
        kind = KeyKind(key)
        id_name = "mbox3rdPartyId" if kind is KeyKind.THIRD_PARTY_ID else "mboxPC"
        pairs = [(id_name, identifier)] + [
            ("profile." + name, value) for name, value in attributes.items()
        ]
        encoded = urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
        path = self._path("update")
        if len(encoded) <= MAX_UPDATE_QUERY:
            response = self.request("POST", f"{path}?{encoded}")
        elif len(encoded) <= MAX_UPDATE_BODY:
            response = self.request(
                "POST",
                path,
                content=encoded.encode("ascii"),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        else:
            raise InputError(
                f"The update is {len(encoded):,} bytes encoded; the single update takes at "
                f"most {MAX_UPDATE_BODY:,}. Push the attributes as a batch instead."
            )
        result = parse_update(response.text)
        if not result.success:
            raise RemoteRejected(result.message or "The update was refused.", 200)
        return result

    # -- push ------------------------------------------------------------------------

    def push(
        self,
        rows_or_path: str | os.PathLike[str] | Iterable[Mapping[str, object]],
        *,
        key: KeyKind | str = KeyKind.THIRD_PARTY_ID,
        id_column: str | None = None,
        columns: list[str] | None = None,
        delimiter: str | None = None,
        version: int = 2,
        dry_run: bool = False,
        wait: bool = True,
        timeout: float | None = None,
        errors_out: str | os.PathLike[str] | None = None,
        idempotency_key: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> PushResult:
        """Push a CSV file (or rows as mappings) into profiles, split to fit the server.

        1. Read the input, map the id column, check each row as the server would and
           percent-encode it; cut the rows into parts within the server's limits.
        2. Dry run: have profilebase check each part (Target: the local checks only).
           Otherwise, if profilebase says the quota cannot take every row, stop before
           sending anything; then send the parts in order, each with the idempotency
           key ``{idempotency_key}-{part}`` (a fresh key if none is given).
        3. Unless ``wait`` is False, poll until every batch has finished.
        4. Map every failed row back to its input row; write them to ``errors_out``.

        Rows that cannot be sent or that fail are in ``result.failures``; the result's
        ``ok`` is True only if every row was applied. Input problems raise
        ``InputError`` or ``BatchRejected`` before anything is sent.
        """
        if version not in (1, 2):
            raise ClientError(f"version must be 1 or 2, got {version}.")
        table = table_of(rows_or_path, delimiter)
        mapping = map_columns(table.header, key, id_column, columns)
        info = self.server_info(refresh=True)
        the_plan = plan(table.read(), mapping, info.limits)
        try:
            server = ServerFailures()
            if dry_run:
                parts = self._dry_run_parts(the_plan, version, info, server)
                waited = True
            else:
                self._check_quota(the_plan, info)
                prefix = idempotency_key or uuid.uuid4().hex
                parts = self._send_parts(the_plan, version, prefix, on_progress)
                waited = wait
                if wait:
                    parts = self._wait_all(parts, the_plan, timeout, on_progress)
                if waited:
                    self._server_failures(the_plan, parts, info, server)
        finally:
            the_plan.close()
        failures = self._row_failures(table, the_plan, server)
        if errors_out is not None:
            write_errors(
                errors_out,
                table.header,
                ((f.cells, f.reason) for f in failures),
                table.delimiter,
            )
        statuses = [p.status for p in parts if p.status is not None]
        return PushResult(
            rows_read=the_plan.records,
            rows_sent=the_plan.rows,
            parts=tuple(parts),
            applied=sum(s.successful or 0 for s in statuses),
            not_found=sum(s.not_found or 0 for s in statuses),
            failures=tuple(failures),
            id_column=mapping.id_column,
            ignored_columns=mapping.ignored,
            dry_run=dry_run,
            waited=waited,
        )

    def _check_quota(self, the_plan: Plan, info: ServerInfo) -> None:
        remaining = info.quota_remaining
        if remaining is not None and the_plan.rows > remaining:
            raise RemoteUnavailable(
                f"The push has {the_plan.rows:,} rows but client {self.client!r} may submit "
                f"only {remaining:,} more in the rolling 24 hours (rowsPerDay "
                f"{info.limits.rows_per_day:,}). Nothing was sent; push fewer rows or later."
            )

    def _send_parts(
        self, the_plan: Plan, version: int, prefix: str, on_progress: ProgressCallback | None
    ) -> list[PartResult]:
        parts: list[PartResult] = []
        for part in the_plan.parts:
            try:
                submitted = self.batch_update(
                    part.body(), version=version, idempotency_key=f"{prefix}-{part.number}"
                )
            except ClientError as exc:
                if parts:
                    sent = ", ".join(f"part {p.number} as {p.batch_id}" for p in parts)
                    exc.message = (
                        f"{exc.message} Already accepted: {sent}. Push again with "
                        f"--idempotency-key {prefix} to send the rest without applying "
                        "those twice."
                    )
                    exc.args = (exc.message,)
                raise
            parts.append(
                PartResult(
                    part.number, part.rows, submitted.batch_id, None, submitted.batch_status_url
                )
            )
            self._progress(on_progress, "uploading", the_plan, parts)
        return parts

    def _wait_all(
        self,
        parts: list[PartResult],
        the_plan: Plan,
        timeout: float | None,
        on_progress: ProgressCallback | None,
    ) -> list[PartResult]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            parts = [
                p
                if p.status is not None and p.status.finished
                else p.with_status(self.batch_status(p.status_url or p.batch_id))
                for p in parts
            ]
            self._progress(on_progress, "applying", the_plan, parts)
            if all(p.status is not None and p.status.finished for p in parts):
                self._progress(on_progress, "done", the_plan, parts)
                return parts
            if deadline is not None and time.monotonic() >= deadline:
                return parts
            self.sleep(self.interval())

    def _progress(
        self,
        on_progress: ProgressCallback | None,
        phase: str,
        the_plan: Plan,
        parts: list[PartResult],
    ) -> None:
        if on_progress is None:
            return
        on_progress(
            PushProgress(
                phase=phase,
                rows_total=the_plan.rows,
                rows_sent=sum(p.rows for p in parts),
                rows_applied=sum(p.status.applied for p in parts if p.status is not None),
                parts_total=len(the_plan.parts),
                parts_sent=len(parts),
            )
        )

    def _dry_run_parts(
        self, the_plan: Plan, version: int, info: ServerInfo, server: ServerFailures
    ) -> list[PartResult]:
        """Check each part on profilebase, noting what would fail; no part becomes a batch."""
        if not info.profilebase:
            return []
        quota = info.quota_remaining
        for part in the_plan.parts:
            report = self.dry_run(part.body(), version=version)
            for failure in report.failures:
                server.by_record[part.record_of_line(failure.line)] = failure.reason
            if report.would_fail > len(report.failures):
                raise ClientError(
                    f"Part {part.number} would fail {report.would_fail:,} rows; the server "
                    f"listed {len(report.failures):,}. Fix those and run the dry run again."
                )
            quota = report.quota_remaining
        if quota is not None and the_plan.rows > quota:
            raise RemoteUnavailable(
                f"The push has {the_plan.rows:,} rows but client {self.client!r} may submit "
                f"only {quota:,} more in the rolling 24 hours."
            )
        return []

    def _server_failures(
        self, the_plan: Plan, parts: list[PartResult], info: ServerInfo, server: ServerFailures
    ) -> None:
        """Note the failed rows: by input record (profilebase) or by part and id (Target)."""
        by_part = {part.number: part for part in the_plan.parts}
        for result in parts:
            if result.status is None:
                continue
            if info.profilebase:
                if result.status.failed:
                    part = by_part[result.number]
                    for row in self.failed_rows(result.batch_id):
                        server.by_record[part.record_of_line(row.line)] = row.reason
            else:
                for identifier in result.status.failed_ids:
                    server.by_id[(result.number, identifier)] = TARGET_FAILED

    def _row_failures(
        self, table: Table, the_plan: Plan, server: ServerFailures
    ) -> list[RowFailure]:
        """Local and server failures as input rows with their original cells, in order.

        The input is read a second time for the cells of rows the server failed.
        """
        failures = [
            RowFailure(f.record, f.line, f.id, f.reason, f.cells) for f in the_plan.failures
        ]
        by_record, by_id = server.by_record, server.by_id
        if by_record or by_id:
            local = {f.record for f in failures}
            bounds = [(p.number, p.records[0], p.records[-1]) for p in the_plan.parts]
            records = table.read()
            if not by_id:
                records = records_by_number(records, set(by_record))
            for record in records:
                reason = by_record.get(record.number)
                if reason is None and by_id and record.number not in local:
                    identifier = record.cells[the_plan.mapping.id_index]
                    for number, first, last in bounds:
                        if first <= record.number <= last:
                            reason = by_id.get((number, identifier))
                            break
                if reason is not None:
                    identifier = record.cells[the_plan.mapping.id_index]
                    failures.append(
                        RowFailure(
                            record.number, record.line, identifier, reason, record.cells, True
                        )
                    )
        return sorted(failures, key=lambda f: f.record)
