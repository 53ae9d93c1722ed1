"""Floating-point operations of the DiT step and the VAE encode/decode per output size: the physical limit a
restore benchmark is compared with. Counted by torch's FlopCounterMode on the full-size architecture on the meta
device (no weights, no memory, a few seconds on a CPU); matmuls, convolutions and attention count, elementwise
ops do not.

    python -m benchmarks.flops --model 3b --sizes 1920x1080,3840x2160
    python -m benchmarks.flops --model 3b --restore-json restore.json --peak-tflops 800

With `--restore-json` (from `benchmarks/restore.py --json`) each phase's achieved TFLOP/s and the time it would
take at `--peak-tflops` (the GPU's dense bf16 matmul rate; measure it, see benchmarks/RESULTS.md) are printed.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.models import TEXT_TOKENS
from benchmarks.restore import parse_size

PHASES = ("encode", "dit", "vae_decode")


def _padded(n: int) -> int:
    return -(-n // 16) * 16  # the pipeline pads outputs to multiples of 16


def count_flops(model: str, width: int, height: int) -> dict[str, float]:
    """FLOPs per phase of one image restored to `width x height` (padded as the pipeline pads it)."""
    from seedvr_local.models.nadit import DiTConfig, NaDiT
    from seedvr_local.models.vae import VAEConfig, VideoAutoencoder

    config = DiTConfig.seedvr2_3b() if model == "3b" else DiTConfig.seedvr2_7b()
    height, width = _padded(height), _padded(width)
    with torch.device("meta"):
        dit = NaDiT.from_dit_config(config).eval()
        vae = VideoAutoencoder.from_vae_config(VAEConfig.seedvr2()).eval()
        latent = torch.empty(33, 1, height // 8, width // 8)
        text = torch.empty(TEXT_TOKENS, config.txt_in_dim)
        image = torch.empty(1, 3, 1, height, width)
        z = torch.empty(1, 16, 1, height // 8, width // 8)
    runs = {
        "encode": lambda: vae.encode(image),
        "dit": lambda: dit.forward_samples([latent], [text], 1000.0),
        "vae_decode": lambda: vae.decode(z),
    }
    flops = {}
    for phase, run in runs.items():
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            run()
        flops[phase] = float(counter.get_total_flops())
    return flops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("3b", "7b"), default="3b")
    parser.add_argument("--sizes", type=lambda s: [parse_size(v) for v in s.split(",")],
                        default=[(1920, 1080), (3840, 2160)], help="output sizes, e.g. 1920x1080,3840x2160")
    parser.add_argument("--restore-json", default=None, help="a benchmarks/restore.py --json report to compare")
    parser.add_argument("--peak-tflops", type=float, default=800.0,
                        help="dense bf16 matmul rate of the GPU (default 800: measured on an H100 SXM)")
    args = parser.parse_args(argv)

    measured: dict[str, dict[str, float]] = {}
    sizes = args.sizes
    if args.restore_json:
        with open(args.restore_json) as f:
            report = json.load(f)
        measured = {row["output"]: row["seconds"] for row in report["results"]}
        sizes = [parse_size(output) for output in measured]

    print(f"# SeedVR2 {args.model.upper()}: TFLOP per phase; at {args.peak_tflops:g} TFLOP/s: the physical limit")
    print(f"{'output':>11} {'phase':>11} {'TFLOP':>8} {'limit s':>8}" + (f" {'measured s':>11} {'TFLOP/s':>8} {'of peak':>8}" if measured else ""))
    for width, height in sizes:
        flops = count_flops(args.model, width, height)
        output = f"{width}x{height}"
        for phase in PHASES:
            tflop = flops[phase] / 1e12
            line = f"{output:>11} {phase:>11} {tflop:>8.1f} {tflop / args.peak_tflops:>8.3f}"
            if output in measured and measured[output].get(phase):
                seconds = measured[output][phase]
                line += f" {seconds:>11.3f} {tflop / seconds:>8.0f} {tflop / seconds / args.peak_tflops:>8.0%}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
