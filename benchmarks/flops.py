"""Floating-point operations of the DiT step and the VAE encode/decode per output size: the physical limit a
restore benchmark is compared with. Counted by torch's FlopCounterMode on the full-size architecture on the meta
device (no weights, no memory, a few seconds on a CPU); matmuls, convolutions and attention count, elementwise
ops do not.

Also counted there: the GPU kernel launches of one DiT forward (`launches`), as the CUDA bf16 path issues them,
with the window attention packed into one varlen call per layer and, for comparison, grouped by window shape
(what SDPA runs). Each launch costs host time; when a forward's launches take longer to issue than their work
takes to run, the GPU waits.

    python -m benchmarks.flops --model 3b --sizes 1920x1080,3840x2160
    python -m benchmarks.flops --model 3b --restore-json restore.json --peak-tflops 800

With `--restore-json` (from `benchmarks/restore.py --json`) each phase's achieved TFLOP/s and the time it would
take at `--peak-tflops` (the GPU's dense bf16 matmul rate; measure it, see benchmarks/RESULTS.md) are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import sys
from collections import Counter
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from seedvr_local import kernels
from seedvr_local.models import window_attention

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
        dit = NaDiT.from_config(config).eval()
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


#: Fused ops of `kernels`: one Triton launch each on CUDA (on the meta device they run their references).
_FUSED_OPS = ("rms_norm", "rms_norm_modulate", "gated_residual", "gated_residual_rms_norm_modulate", "rotate_pairs")
_NO_LAUNCH = {"empty", "empty_strided", "empty_like", "detach", "lift_fresh", "alias"}


class _LaunchCounter(TorchDispatchMode):
    """Counts the ops that would launch a kernel on the model's device: views, allocations and host-side work
    (the window index building) launch none."""

    def __init__(self):
        super().__init__()
        self.launches: Counter[str] = Counter()
        self.inside_fused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.inside_fused or func.is_view or func.overloadpacket.__name__ in _NO_LAUNCH:
            return out
        tensors = [t for t in (*args, *(kwargs or {}).values(), out) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "meta" for t in tensors):
            self.launches[func.overloadpacket.__name__] += 1
        return out

    def one_launch(self, fn, name: str):
        @functools.wraps(fn)
        def counted(*args, **kwargs):
            self.launches[name] += 1
            self.inside_fused += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.inside_fused -= 1

        return counted


def count_launches(model: str, width: int, height: int, attention: str = "packed") -> Counter[str]:
    """Kernel launches of one DiT forward (bf16) by op, as the CUDA path with Triton kernels issues them.
    `attention`: "packed" (one varlen flash call per layer) or "grouped" (one SDPA call per window shape)."""
    from seedvr_local.models.nadit import DiTConfig, NaDiT

    config = DiTConfig.seedvr2_3b() if model == "3b" else DiTConfig.seedvr2_7b()
    height, width = _padded(height), _padded(width)
    with torch.device("meta"):
        # All parameters bf16, the modulation offsets too: launches do not depend on them, and `ModelMixin.to`
        # would warn that it casts `_keep_in_fp32_modules` (which a checkpoint load keeps in fp32).
        dit = torch.nn.Module.to(NaDiT.from_config(config).eval(), torch.bfloat16)
        latent = torch.empty(33, 1, height // 8, width // 8, dtype=torch.bfloat16)
        text = torch.empty(TEXT_TOKENS, config.txt_in_dim, dtype=torch.bfloat16)
    counter = _LaunchCounter()
    with contextlib.ExitStack() as patches:
        for name in _FUSED_OPS:
            patches.enter_context(mock.patch.object(kernels, name, counter.one_launch(getattr(kernels, name), name)))
        registry = window_attention.ATTENTION_BACKENDS
        sdpa = counter.one_launch(window_attention.sdpa_attention, "attention")
        patches.enter_context(mock.patch.dict(registry, {"sdpa": dataclasses.replace(registry["sdpa"], kernel=sdpa)}))
        if attention == "packed":  # the meta device has no flash kernel: stand in for the one launch it makes
            varlen = counter.one_launch(lambda q, k, v, packed: torch.empty_like(q), "attention")
            stand_in = dataclasses.replace(registry["torch_varlen"], kernel=varlen)
            patches.enter_context(mock.patch.dict(registry, {"torch_varlen": stand_in}))
            patches.enter_context(mock.patch.object(window_attention, "attention_backend_available", lambda *a: True))
            dit.set_window_attention_backend("torch_varlen")
        else:
            dit.set_window_attention_backend("sdpa")
        with torch.no_grad(), counter:
            dit.forward_samples([latent], [text], 1000.0)
    return counter.launches


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

    print(f"\n# Kernel launches of one {args.model.upper()} DiT forward (CUDA, bf16, Triton kernels), by attention layout")
    print(f"{'output':>11} {'packed':>8} {'grouped':>8}")
    for width, height in sizes:
        packed, grouped = (sum(count_launches(args.model, width, height, a).values()) for a in ("packed", "grouped"))
        print(f"{f'{width}x{height}':>11} {packed:>8} {grouped:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
