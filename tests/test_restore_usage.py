"""`benchmarks/restore.py` reports what each phase cost the process (CPU time, page faults), idle runs included."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks import restore
from tests.reference_data import REPO_ROOT


def test_usage_per_phase_for_the_first_warm_and_after_idle_runs(tmp_path, tiny_bundle):
    out = tmp_path / "restore.json"
    argv = ["--model", str(tiny_bundle), "--sizes", "48x32", "--idle", "0", "--json", str(out)]
    # In a fresh process: what the first run faults in depends on what the process allocated before (earlier
    # tests, and the memory policy one of them may have set, would leave nothing to fault in).
    run = subprocess.run([sys.executable, "-m", "benchmarks.restore", *argv], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=240)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "minor faults" in run.stdout
    usage = json.loads(out.read_text())["usage"]
    runs = {}
    for row in usage:
        runs.setdefault(row["run"], {})[row["phase"]] = row
    assert list(runs) == ["first", "warm", "after 0 s idle"]
    for phases in runs.values():
        assert set(phases) == {*restore.PHASES, "total"}
        total = phases["total"]
        each = [row for phase, row in phases.items() if phase != "total"]
        for field in ("minor_faults", "major_faults"):
            assert all(isinstance(row[field], int) and row[field] >= 0 for row in each)
            assert total[field] == sum(row[field] for row in each)
        assert total["user_s"] + total["system_s"] > 0 and total["wall_s"] > 0
    # The first run faults in the memory every run needs: there is something to count.
    assert runs["first"]["total"]["minor_faults"] > 0
