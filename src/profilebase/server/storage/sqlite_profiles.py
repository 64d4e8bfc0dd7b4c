"""Lists bound as one parameter on SQLite: JSON arrays, read by ``json_each`` in the queries."""

from __future__ import annotations

import json
from collections.abc import Sequence


def json_list(items: Sequence[object]) -> str:
    return json.dumps(items, ensure_ascii=False)
