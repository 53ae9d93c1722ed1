"""`benchmarks/restore.py` reports what each phase cost the process (CPU time, page faults), idle runs included."""

from __future__ import annotations

import json

from benchmarks import restore


def test_usage_per_phase_for_the_first_warm_and_after_idle_runs(tmp_path, tiny_bundle, capsys):
    out = tmp_path / "restore.json"
    argv = ["--model", str(tiny_bundle), "--sizes", "48x32", "--idle", "0", "--json", str(out)]
    assert restore.main(argv) == 0
    assert "minor faults" in capsys.readouterr().out
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
