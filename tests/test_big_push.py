"""A file of 1.2 million rows: split into 3 batches of at most 500,000 and fully applied.

SQLite only, unlike the other API tests: the splitting is the client's and does not depend
on the backend, and applying this much on PostgreSQL is measured by benchmarks/postgres.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from profilebase import Client
from profilebase.server.settings import Settings

ROWS = 1_200_000


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Target's limits as they are (500,000 rows, under 50 MB a batch); the daily quota
    (1,000,000 rows by default) is raised so that one push of 1.2 M rows is allowed."""
    return Settings(
        database=f"sqlite:///{tmp_path}/test.db",
        workers=0,
        unit_rows=25_000,
        rows_per_day=2 * ROWS,
    )


@pytest.mark.slow
def test_push_of_1_2_million_rows(sdk: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """3 batches of 500,000, 500,000 and 200,000 rows, every row applied, in input order."""
    source = tmp_path / "big.csv"
    with open(source, "w", encoding="utf-8") as out:
        out.write("customerId,tier\n")
        out.writelines(f"c{i},{i % 7}\n" for i in range(ROWS))
        out.write("c0,last\n")  # a later row for the same profile wins
    start = time.perf_counter()
    result = sdk.push(source)
    seconds = time.perf_counter() - start
    assert [part.rows for part in result.parts] == [500_000, 500_000, 200_001]
    assert result.ok and result.applied == ROWS + 1 and result.rows_read == ROWS + 1
    for identifier, tier in [("c0", "last"), ("c499999", "3"), ("c500000", "4"), ("c1199999", "3")]:
        profile = sdk.get_profile(identifier, key="thirdPartyId")
        assert profile is not None and profile.values() == {"tier": tier}
    with capsys.disabled():
        print(f"\n1.2 M-row push: {seconds:.1f} s, {ROWS / seconds:,.0f} rows/s")
