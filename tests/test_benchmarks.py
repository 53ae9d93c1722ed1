"""Smoke tests: the benchmark scripts run in CI-sized configurations and write what the README says."""

from __future__ import annotations

import json

from benchmarks import restore


def test_restore_benchmark_smoke(tmp_path, tiny_bundle, capsys):
    out = tmp_path / "restore.json"
    assert restore.main(["--model", str(tiny_bundle), "--sizes", "48x32,32x48", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "MP/s" in table and "48x32" in table and "32x48" in table
    report = json.loads(out.read_text())
    assert [row["output"] for row in report["results"]] == ["48x32", "32x48"]
    row = report["results"][0]
    assert set(row["seconds"]) == set(restore.PHASES)
    assert all(row["seconds"][phase] > 0 for phase in ("encode", "dit", "vae_decode"))
    assert row["max_peak_gib"] > 0


def test_server_benchmark_smoke(tmp_path, capsys):
    from benchmarks import server

    out = tmp_path / "server.json"
    assert server.main(["--clients", "2", "--requests", "2", "--input", "24x16", "--json", str(out)]) == 0
    assert "req/s" in capsys.readouterr().out
    rows = json.loads(out.read_text())["results"]
    assert [(r["mode"], r["clients"]) for r in rows] == [("sync", 2), ("queue", 2)]
    assert all(r["failed"] == 0 and r["requests_per_s"] > 0 for r in rows)

