"""The ``batch=`` format of Target's Bulk Profile Update API: parse and encode, no I/O.

A batch body is ``batch=`` followed by CSV lines: a header whose first name is
``pcId`` or ``thirdPartyId`` and whose other names are attribute names, then
one line per profile update. Every name and cell is form-urlencoded UTF-8
(``%XX`` is a byte, ``+`` a space); cells are separated by raw commas and the
whitespace around a raw cell is not part of it. An empty cell leaves the
attribute unchanged. This module is the reference: the fast decoder in
``decoder.py`` must agree with it on every input.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from profilebase.errors import BatchRejected
from profilebase.ids import MAX_PC_ID_LENGTH as MAX_PC_ID_LENGTH  # the id rule lives in ids
from profilebase.ids import check_id
from profilebase.models import KeyKind

PREFIX = b"batch="
BOM = b"\xef\xbb\xbf"
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_WHITESPACE = b" \t\r"
#: A line ends with LF, CRLF or a lone CR (old Mac and some Excel exports).
LINE_END = re.compile(rb"\r\n|\r|\n")
#: Cells longer than this are percent-decoded piece by piece.
UNQUOTE_PIECE = 1 << 16


class CellError(ValueError):
    """A cell cannot be decoded; the message says why."""


@dataclass(frozen=True)
class Header:
    """The decoded header line."""

    key_kind: KeyKind
    names: tuple[str, ...]

    @property
    def width(self) -> int:
        return len(self.names) + 1


@dataclass(frozen=True)
class Row:
    """A decoded data row: the id and the non-empty attribute values, in header order."""

    id: str
    values: dict[str, str]


def decode_cell(raw: bytes) -> str:
    """Decode one raw cell: trim unencoded whitespace, ``+`` to space, ``%XX`` to a byte, UTF-8."""
    raw = raw.strip(_WHITESPACE)
    bad = _BAD_PERCENT.search(raw)
    if bad:
        snippet = raw[bad.start() : bad.start() + 3].decode("latin-1")
        raise CellError(
            f"invalid percent-encoding {snippet!r}: '%' must be followed by two hex digits "
            "(encode a literal '%' as %25)"
        )
    try:
        return _unquote(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CellError(
            "invalid UTF-8 after percent-decoding: encode values as UTF-8 before "
            f"percent-encoding ({exc.reason} at byte {exc.start})"
        ) from None


def _unquote(raw: bytes) -> bytes:
    """Percent-decode ``raw`` (every ``%`` starts a valid escape), a piece at a time.

    ``unquote_to_bytes`` makes an object per escape: tens of millions for a cell of
    tens of MB. Pieces of ``UNQUOTE_PIECE`` bytes, cut before an escape, bound that.
    """
    if b"%" not in raw:
        return raw
    if len(raw) <= UNQUOTE_PIECE:
        return urllib.parse.unquote_to_bytes(raw)
    pieces = []
    start = 0
    while start < len(raw):
        end = min(start + UNQUOTE_PIECE, len(raw))
        escape = raw.rfind(b"%", max(start, end - 2), end)
        if escape >= 0 and end < len(raw):
            # The escape starting there would end in the next piece: cut before it.
            end = escape if escape > start else escape + 3
        pieces.append(urllib.parse.unquote_to_bytes(raw[start:end]))
        start = end
    return b"".join(pieces)


def parse_header(line: bytes) -> Header:
    """Parse the first line (``batch=`` and BOM already removed); reject with a helpful message."""
    line = line.rstrip(b"\r\n")
    try:
        names = [decode_cell(cell) for cell in line.split(b",")]
    except CellError as exc:
        raise BatchRejected(f"The header line cannot be decoded: {exc}.") from None
    first = names[0]
    try:
        key_kind = KeyKind(first)
    except ValueError:
        raise BatchRejected(
            f"The first header must be exactly `pcId` or `thirdPartyId`, got {first!r}. "
            "Name the id column pcId (Target visitor id) or thirdPartyId (your own id, "
            "mbox3rdPartyId); the Experience Cloud ID is not supported as a key."
        ) from None
    attributes = names[1:]
    seen: set[str] = set()
    for position, name in enumerate(attributes, start=2):
        if not name:
            raise BatchRejected(
                f"Header column {position} is empty: every column needs an attribute name."
            )
        if name.startswith("profile."):
            raise BatchRejected(
                f"Header column {position} is {name!r}: write attribute names as paramName, "
                f"without the `profile.` prefix (here: {name.removeprefix('profile.')!r})."
            )
        if name in seen:
            raise BatchRejected(
                f"Header column {position} repeats the attribute name {name!r}: "
                "each attribute may appear once in the header."
            )
        seen.add(name)
    return Header(key_kind, tuple(attributes))


def parse_row(line: bytes, header: Header) -> Row:
    """Decode one non-blank data line; raise ``CellError`` with the reason it fails."""
    line = line.rstrip(b"\r")
    count = line.count(b",") + 1  # counted before splitting: a line may be 40 MB of commas
    if count > header.width:
        raise CellError(
            f"row has {count} cells but the header has {header.width} columns "
            "(encode commas inside values as %2C)"
        )
    cells = line.split(b",")
    decoded = [decode_cell(cell) for cell in cells]
    problem = check_id(header.key_kind, decoded[0])
    if problem:
        raise CellError(problem)
    values = {name: value for name, value in zip(header.names, decoded[1:], strict=False) if value}
    return Row(decoded[0], values)


def is_blank(line: bytes) -> bool:
    return not line.strip(_WHITESPACE)


def split_prefix(head: bytes) -> bytes:
    """Strip the BOM and the ``batch=`` prefix from the start of a body, or reject it."""
    if head.startswith(BOM):
        head = head[len(BOM) :]
    if not head.startswith(PREFIX):
        raise BatchRejected(
            "The body must start with `batch=` followed by the header line, e.g. "
            "`batch=thirdPartyId,attr1,attr2`. Add `batch=` at the very beginning of the file."
        )
    return head[len(PREFIX) :]


def parse(body: bytes) -> tuple[Header, list[tuple[int, Row | CellError]]]:
    """Parse a whole body: the header and, per non-blank line, its line number and outcome."""
    text = split_prefix(body)
    lines = LINE_END.split(text)
    header = parse_header(lines[0])
    outcomes: list[tuple[int, Row | CellError]] = []
    for number, line in enumerate(lines[1:], start=2):
        if is_blank(line):
            continue
        try:
            outcomes.append((number, parse_row(line, header)))
        except CellError as exc:
            outcomes.append((number, exc))
    return header, outcomes


def encode_cell(value: str) -> str:
    """Percent-encode a name or value so that it survives the format unchanged."""
    return urllib.parse.quote(value, safe="")


def encode_header(key_kind: KeyKind | str, names: Sequence[str]) -> str:
    """The first line of a batch body, without its line end."""
    return "batch=" + ",".join([str(KeyKind(key_kind))] + [encode_cell(n) for n in names])


def encode_row(cells: Sequence[str | None]) -> str:
    """One data line (the id, then values; None or "" for no change), without its line end."""
    return ",".join(encode_cell(cell or "") for cell in cells)


def encode(
    key_kind: KeyKind | str, names: Sequence[str], rows: Iterable[Sequence[str | None]]
) -> bytes:
    """Encode a batch body: each row is the id followed by values (None or "" for no change)."""
    out = [encode_header(key_kind, names)] + [encode_row(row) for row in rows]
    return ("\n".join(out) + "\n").encode("ascii")
