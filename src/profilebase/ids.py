"""The one rule for profile ids, checked by every way an id comes in.

A batch row, a single update, a page call and the path of a fetch or delete all
ask ``check_id``, so an id one endpoint stores every other can reach, and an id
one refuses every other refuses with the same reason. The fast decoder
(``decoder.py``) states the same rule in SQL; tests/test_ids.py holds them to it.

- Target's rules: a thirdPartyId has no ``+`` or ``/``; a pcId (tntId) has at
  most 128 characters and at most one ``.`` (the one before the location hint).
- A thirdPartyId has at most 256 characters (the Delivery API's limit, now the
  limit everywhere).
- No id is empty or only spaces, holds a control character (U+0000-U+001F,
  U+007F-U+009F: NUL, tab, CR, LF, escape...) or an unpaired surrogate, or is
  ``.`` or ``..`` (which URL paths cannot carry).

Lengths count characters (Unicode code points), not bytes.
"""

from __future__ import annotations

import re

from profilebase.models import KeyKind

MAX_PC_ID_LENGTH = 128
MAX_THIRD_PARTY_ID_LENGTH = 256
MAX_LENGTH = {KeyKind.PC_ID: MAX_PC_ID_LENGTH, KeyKind.THIRD_PARTY_ID: MAX_THIRD_PARTY_ID_LENGTH}
#: Characters no id may hold: C0 and C1 controls, DEL, and unpaired surrogates.
FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
DOT_SEGMENTS = {".", ".."}
#: A thirdPartyId that is valid for certain: 1 to 256 characters, the first neither a space
#: nor a dot, none a control character, an unpaired surrogate, ``+`` or ``/``. What it does
#: not match may still be valid: ``check_id`` decides (``is_valid_third_party_id``).
PLAIN_THIRD_PARTY_ID = re.compile(
    "[^\x00-\x20\x7f-\x9f\ud800-\udfff+/.][^\x00-\x1f\x7f-\x9f\ud800-\udfff+/]{0,255}"
)


def is_valid_third_party_id(identifier: str) -> bool:
    """``check_id(THIRD_PARTY_ID, identifier) is None``, at a quarter of its cost for the
    common id (one regular expression; the full rule for the rest)."""
    if PLAIN_THIRD_PARTY_ID.fullmatch(identifier) is not None:
        return True
    return check_id(KeyKind.THIRD_PARTY_ID, identifier) is None


def check_id(key_kind: KeyKind, identifier: str) -> str | None:
    """Return why ``identifier`` is not a valid id of this kind, or None if it is."""
    if not identifier.strip(" "):
        return "empty id: every row or call must name its profile (an id of only spaces is empty)"
    longest = MAX_LENGTH[key_kind]
    if len(identifier) > longest:
        return f"{key_kind} is {len(identifier)} characters long; at most {longest} allowed"
    bad = FORBIDDEN.search(identifier)
    if bad:
        char = ord(bad.group())
        what = "an unpaired surrogate" if 0xD800 <= char <= 0xDFFF else "a control character"
        return (
            f"{key_kind} contains {what} (U+{char:04X}) at position {bad.start() + 1}; "
            "ids cannot hold control characters (NUL, tab, CR, LF...) or invalid Unicode"
        )
    if identifier in DOT_SEGMENTS:
        return f"{key_kind} cannot be '.' or '..' (a URL path cannot carry it)"
    if key_kind is KeyKind.THIRD_PARTY_ID:
        if "+" in identifier or "/" in identifier:
            return (
                "thirdPartyId must not contain '+' or '/' (Target forbids them in mbox3rdPartyId)"
            )
    elif identifier.count(".") > 1:
        return "pcId may contain at most one '.' (the one before the location hint)"
    return None
