"""atheris fuzzes the batch parser and the fast decoder for a few seconds each, in a subprocess.

The properties live in tests/fuzz_targets.py (run it by hand for longer): the parser raises
nothing but its own batch and row errors, streaming intake and whole-body parse agree, and the
DuckDB decoder agrees with the reference rules on every unit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is in the dev extra")

TARGETS = Path(__file__).with_name("fuzz_targets.py")
#: Seconds each target runs; the whole test stays around 20 s.
SECONDS = 10


@pytest.mark.parametrize("target", ["parser", "decoder"])
def test_fuzz_target_finds_nothing(target: str, tmp_path: Path):
    """libFuzzer runs the target for SECONDS seconds; any failing input fails the test and
    is kept beside the corpus (replay: fuzz_targets.py TARGET crash-file)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    command = [
        sys.executable,
        str(TARGETS),
        target,
        f"-max_total_time={SECONDS}",
        "-timeout=30",
        "-rss_limit_mb=1024",
        f"-dict={tmp_path / 'tokens.dict'}",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
    ]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=SECONDS + 120
    )
    runs = [line for line in done.stderr.splitlines() if line.startswith("Done ")]
    print(target, runs)
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert done.returncode == 0 and not crashes, (crashes, done.stderr[-4000:])
    assert runs, done.stderr[-2000:]
