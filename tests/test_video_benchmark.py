"""Smoke test: the video benchmark runs on the tiny model and reports every phase."""

from __future__ import annotations

import json

from benchmarks import video


def test_video_benchmark_smoke(tmp_path, tiny_bundle, capsys):
    out = tmp_path / "video.json"
    argv = ["--weights-dir", str(tiny_bundle), "--input", "16x16", "--frames", "7", "--clip-frames", "5",
            "--factor", "1", "--json", str(out)]  # fmt: skip
    assert video.main(argv) == 0
    assert "fps" in capsys.readouterr().out
    row = json.loads(out.read_text())["results"][0]
    assert row["frames"] == 7 and row["output"] == "16x16" and row["frames_per_s"] > 0
    assert all(row["seconds"][phase] > 0 for phase in ("decode", "encode", "dit", "vae_decode", "encode_video"))
