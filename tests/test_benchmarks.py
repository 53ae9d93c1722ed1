"""Smoke tests: the benchmark scripts run in CI-sized configurations and write what the README says."""

from __future__ import annotations

import json

import torch

from benchmarks import restore


def test_restore_benchmark_smoke(tmp_path, tiny_bundle, capsys):
    out, profile = tmp_path / "restore.json", tmp_path / "profile.txt"
    argv = ["--model", str(tiny_bundle), "--sizes", "48x32,32x48", "--json", str(out), "--profile", str(profile),
            "--vae-layout", "channels-last"]  # fmt: skip
    assert restore.main(argv) == 0
    table = capsys.readouterr().out
    assert "VAE channels-last" in table
    assert "MP/s" in table and "first s" in table and "48x32" in table and "32x48" in table
    text = profile.read_text()
    assert "## 48x32" in text and "## 32x48" in text and "conv" in text
    report = json.loads(out.read_text())
    assert [row["output"] for row in report["results"]] == ["48x32", "32x48"]
    row = report["results"][0]
    assert set(row["seconds"]) == set(restore.PHASES)
    assert all(row["seconds"][phase] > 0 for phase in ("encode", "dit", "vae_decode"))
    assert row["max_peak_gib"] > 0 and row["first_s"] > 0
    assert report["channels_last"] is True


def test_flops_counts_the_full_size_model(tmp_path, capsys):
    from benchmarks import flops

    counted = flops.count_flops("3b", 1920, 1080)
    # 2 FLOPs per parameter per token for 120x68 tokens after the 2x2 patch (1088 rows), as a bracket: the text
    # stream's and the modulation's parameters see far fewer tokens, window attention adds a little
    from seedvr_local.models.nadit import DiTConfig, NaDiT

    with torch.device("meta"):
        params = sum(p.numel() for p in NaDiT.from_config(DiTConfig.seedvr2_3b()).blocks.parameters())
    assert 0.6 * 2 * params * 120 * 68 < counted["dit"] < 1.2 * 2 * params * 120 * 68
    assert counted["vae_decode"] > counted["encode"] > 0

    report = tmp_path / "restore.json"
    seconds = {"encode": 0.5, "dit": 1.0, "vae_decode": 2.0}
    report.write_text(json.dumps({"results": [{"output": "64x64", "seconds": seconds}]}))
    assert flops.main(["--model", "3b", "--restore-json", str(report)]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("64x64")]
    assert [line[1] for line in lines[:3]] == ["encode", "dit", "vae_decode"]
    assert all(line[-1].endswith("%") for line in lines[:3])
    assert len(lines) == 4 and all(int(n) > 0 for n in lines[3][1:])  # kernel launches: packed, grouped


def test_packed_window_attention_launches_a_fixed_number_of_kernels_per_layer():
    from benchmarks import flops

    packed, grouped = (sum(flops.count_launches("3b", 1280, 720, a).values()) for a in ("packed", "grouped"))
    layers = 32
    assert packed < 50 * layers < grouped, (packed, grouped)


def test_server_benchmark_smoke(tmp_path, capsys):
    from benchmarks import server

    out = tmp_path / "server.json"
    assert server.main(["--clients", "2", "--requests", "2", "--input", "24x16", "--json", str(out)]) == 0
    assert "req/s" in capsys.readouterr().out
    rows = json.loads(out.read_text())["results"]
    assert [(r["mode"], r["clients"]) for r in rows] == [("sync", 2), ("queue", 2)]
    assert all(r["failed"] == 0 and r["requests_per_s"] > 0 for r in rows)

