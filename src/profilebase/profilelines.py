"""The JSON lines of profiles that ``profilebase export`` writes and import reads.

Both sides read them typed with msgspec (``DECODER``): the server's import decodes each line
this way first (``server/profile_import.py``), and the SDK rewrites each line it sends in a
compact form (``compact``) that imports exactly as the line does:

- ``client`` and each attribute's ``writtenBy`` go: import ignores them;
- an attribute whose ``modifiedAt`` is missing or the same text as the profile's is written
  as its value alone (a missing attribute time is the profile's);
- a ``visitorId`` equal to the ``thirdPartyId`` goes (the profile is stored under its
  thirdPartyId, and only a visitorId that differs from it is linked);
- nulls and empty ``tntIds`` go (they mean what leaving them out means).

An exported line is about 1.2 KB for 7 attributes, its compact form about 210 bytes. A line
that does not decode as a profile (not JSON, a value that is not text, ...) is sent as it is,
so that the server judges it and says why it fails.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "DECODER",
    "PLAIN_DECODER",
    "Attribute",
    "PlainProfile",
    "Profile",
    "compact",
    "compact_lines",
]


# Decoded objects are trees, never cycles: untracked by the garbage collector, msgspec
# builds them twice as fast.
class Attribute(msgspec.Struct, gc=False, omit_defaults=True):
    value: str
    modifiedAt: str | None = None


class Profile(msgspec.Struct, gc=False, omit_defaults=True):
    """The fields an import reads; others (client, writtenBy) are ignored."""

    visitorId: str | None = None
    thirdPartyId: str | None = None
    tntIds: list[str] = []
    modifiedAt: str | None = None
    #: An attribute is ``{value, modifiedAt}`` or its value alone.
    profileAttributes: dict[str, Attribute | str] = {}


class PlainProfile(msgspec.Struct, gc=False):
    """A profile whose attributes are all plain text (each at the profile's time)."""

    visitorId: str | None = None
    thirdPartyId: str | None = None
    tntIds: list[str] = []
    modifiedAt: str | None = None
    profileAttributes: dict[str, str] = {}


DECODER = msgspec.json.Decoder(Profile)
PLAIN_DECODER = msgspec.json.Decoder(PlainProfile)
ENCODER = msgspec.json.Encoder()


def compact(line: bytes) -> bytes:
    """The line in its compact form (without its line break); the line itself if it does not
    decode as a profile or cannot be written again exactly."""
    try:
        document = DECODER.decode(line)
    except msgspec.DecodeError:
        return line
    when = document.modifiedAt
    document.profileAttributes = {
        name: (
            entry
            if isinstance(entry, str)
            else entry.value
            if entry.modifiedAt is None or entry.modifiedAt == when
            else entry
        )
        for name, entry in document.profileAttributes.items()
    }
    if document.visitorId is not None and document.visitorId == document.thirdPartyId:
        document.visitorId = None
    try:
        return ENCODER.encode(document)
    except (UnicodeEncodeError, msgspec.EncodeError):  # e.g. a lone surrogate escaped in JSON
        return line


def compact_lines(data: bytes) -> bytes:
    """Each line of ``data`` compact (``compact``), one line for one, blank lines kept (so that
    line numbers stay those of the file)."""
    return b"\n".join(compact(line) if line.strip() else line for line in data.split(b"\n"))
