"""What a PostgreSQL profile cannot hold: the character U+0000.

PostgreSQL's text and jsonb cannot store it; SQLite can. ``PostgresStore`` refuses
keys, names and values carrying it with ``NUL_REASON`` rather than store them
differently.
"""

from __future__ import annotations

import json

from profilebase.errors import BadRequest

#: PostgreSQL's text and jsonb cannot hold U+0000; SQLite can. Rows, ids and values
#: carrying it are refused here with this reason rather than stored differently.
NUL_REASON = (
    "PostgreSQL cannot store the character U+0000 (NUL): remove it from the id, the "
    "attribute names and the values"
)


def has_nul(*texts: str) -> bool:
    return any("\x00" in text for text in texts)


def row_has_nul(identifier: str, attrs: str) -> bool:
    """True if a decoded row's id, names or values hold U+0000 (JSON spells it \\u0000)."""
    if "\x00" in identifier:
        return True
    if "u0000" not in attrs:
        return False
    return any(has_nul(name, entry[0]) for name, entry in json.loads(attrs).items())


def refuse_nul(*texts: str) -> None:
    if has_nul(*texts):
        raise BadRequest(NUL_REASON + ".")
