"""Each kernel op against its PyTorch reference: time per call and achieved bandwidth.

    python -m benchmarks.kernels [--device auto|cpu|cuda] [--dtype bf16|fp16|fp32] [--size tiny|1080p|2160p]
                                 [--repeat N] [--warmup N] [--compile] [--json PATH]

Shapes are those of the 3B model and the VAE decoder at the given output size (`tiny` is a CPU smoke test).
Rows: `torch` (the reference, eager), `triton` (the kernel; on CUDA with triton installed) and, with
`--compile`, `inductor` (torch.compile of the reference: what the kernels have to beat under `--compile`).
GB/s counts the bytes an ideal implementation moves (each input read once, each output written once), so it
compares directly with the GPU's memory bandwidth. `max_err` is the largest difference from the reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from seedvr_local import kernels
from seedvr_local.kernels import backend, reference

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# DiT: tokens, window tokens, dim, heads, head_dim, rope pairs; VAE: channels, groups, frame height and width.
SIZES = {
    "tiny": dict(tokens=96, window=24, dim=64, heads=2, head_dim=16, pairs=7, channels=8, groups=2, height=24,
                 width=40),
    # 3B: D 2560, 20 heads of 128, 63 rotated pairs; ~405-token windows; the decoder's last stage, 128 channels.
    "1080p": dict(tokens=68 * 120, window=405, dim=2560, heads=20, head_dim=128, pairs=63, channels=128,
                  groups=32, height=1088, width=1920),
    "2160p": dict(tokens=135 * 240, window=405, dim=2560, heads=20, head_dim=128, pairs=63, channels=128,
                  groups=32, height=2160, width=3840),
}  # fmt: skip
NORM_EPS, GN_EPS = 1e-5, 1e-6


@dataclass
class Bench:
    kernel: str
    shape: str
    bytes: int
    op: Callable[[], object]  # the public op (runs the active backend)
    ref: Callable[[], object]  # the PyTorch reference


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def build(size: str, device: torch.device, dtype: torch.dtype) -> list[Bench]:
    s = SIZES[size]
    g = torch.Generator(device=device).manual_seed(0)
    randn = lambda *shape, dt=dtype: torch.randn(*shape, generator=g, device=device).to(dt)  # noqa: E731
    n, d = s["tokens"], s["dim"]
    x, h = randn(n, d), randn(n, d)
    scale, shift, gate = (randn(1, d, dt=torch.float32) for _ in range(3))
    benches = [
        Bench(
            "rms_norm_modulate", f"{n}x{d}", 2 * _nbytes(x) + _nbytes(scale, shift),
            lambda: kernels.rms_norm_modulate(x, scale, shift, eps=NORM_EPS),
            lambda: reference.rms_norm_modulate(x, scale, shift, eps=NORM_EPS),
        ),
        Bench(
            "gated_residual_rms_norm_modulate", f"{n}x{d}", 4 * _nbytes(x) + _nbytes(scale, shift, gate),
            lambda: kernels.gated_residual_rms_norm_modulate(x, h, gate, scale, shift, eps=NORM_EPS),
            lambda: reference.gated_residual_rms_norm_modulate(x, h, gate, scale, shift, eps=NORM_EPS),
        ),
    ]  # fmt: skip

    heads, head_dim, seq = s["heads"], s["head_dim"], s["window"]
    windows = n // seq
    q = randn(n, heads, head_dim)
    index = torch.randperm(n, generator=g, device=device)[: windows * seq].view(windows, seq)
    angles = torch.rand(seq, s["pairs"], generator=g, device=device) * 100
    cos, sin = angles.cos(), angles.sin()
    moved = 2 * windows * seq * heads * head_dim * q.element_size() + _nbytes(cos, sin, index)
    benches.append(Bench(
        "rotate_pairs", f"{windows}x{seq}x{heads}x{head_dim} (gather)", moved,
        lambda: kernels.rotate_pairs(q, cos, sin, index=index),
        lambda: reference.rotate_pairs(q, cos, sin, index=index),
    ))  # fmt: skip

    frame = randn(1, s["channels"], 1, s["height"], s["width"])
    weight, bias = randn(s["channels"]), randn(s["channels"])
    groups = s["groups"]
    stats = reference.group_norm_stats(frame, groups, GN_EPS)
    shape = "x".join(map(str, frame.shape))
    benches += [
        Bench(
            "group_norm_stats", shape, _nbytes(frame),
            lambda: kernels.group_norm_stats(frame, groups, GN_EPS),
            lambda: reference.group_norm_stats(frame, groups, GN_EPS),
        ),
        Bench(
            "group_norm_silu", shape, 2 * _nbytes(frame),
            lambda: kernels.group_norm_silu(frame, groups, weight, bias, stats=stats),
            lambda: reference.group_norm_silu(frame, stats, weight, bias),
        ),
    ]  # fmt: skip

    # The VAE's mid-block attention: a block of ~1000 queries against every position of the 1/8-size frame.
    scores = 8 * torch.randn(1000, (s["height"] // 8) * (s["width"] // 8), generator=g, device=device)
    attn_scale = 512**-0.5
    benches.append(Bench(
        "unnormalized_softmax", "x".join(map(str, scores.shape)),
        _nbytes(scores) + scores.numel() * torch.empty((), dtype=dtype).element_size() + 4 * scores.shape[0],
        lambda: kernels.unnormalized_softmax(scores, attn_scale, dtype),
        lambda: reference.unnormalized_softmax(scores, attn_scale, dtype),
    ))  # fmt: skip
    return benches


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int) -> float:
    """Median wall time of one call, in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _first(out) -> torch.Tensor:
    """The output compared: the last tensor (the normalised input of a fused op, the rstd of stats)."""
    if isinstance(out, tuple):
        return out[-1]
    return out


def max_err(a, b) -> float:
    return (_first(a).float() - _first(b).float()).abs().max().item()


def _with_triton(op: Callable[[], Any]) -> Callable[[], Any]:
    """`op` run as a model with the triton backend runs it."""

    def run_op():
        with kernels.use("triton"):
            return op()

    return run_op


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    active, _ = backend.resolve("auto", device)
    impls = ["torch"] + (["triton"] if active == "triton" else []) + (["inductor"] if args.compile else [])
    rows = []
    for bench in build(args.size, device, dtype):
        expected = bench.ref()
        for impl in impls:
            if impl == "torch":
                fn = bench.ref
            elif impl == "triton":
                fn = _with_triton(bench.op)
            else:
                fn = torch.compile(bench.ref, dynamic=False)
            out = fn()
            ms = time_ms(fn, device, args.repeat, args.warmup)
            rows.append(dict(
                kernel=bench.kernel, shape=bench.shape, impl=impl, ms=ms, bytes=bench.bytes,
                gb_per_s=bench.bytes / (ms * 1e-3) / 1e9, max_err=max_err(out, expected),
            ))  # fmt: skip
    return dict(
        device=device.type,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        dtype=args.dtype, size=args.size, backend=active, torch=torch.__version__,
        triton=backend.triton_version(), date=time.strftime("%Y-%m-%d"), rows=rows,
    )  # fmt: skip


def format_table(report: dict) -> str:
    lines = [
        f"kernels on {report['device_name']} ({report['dtype']}, {report['size']}), backend {report['backend']}, "
        f"torch {report['torch']}, triton {report['triton'] or '-'}",
        f"{'kernel':<34} {'shape':<28} {'impl':<9} {'ms':>9} {'GB/s':>8} {'speedup':>8} {'max_err':>9}",
    ]
    baseline = {r["kernel"]: r["ms"] for r in report["rows"] if r["impl"] == "torch"}
    for r in report["rows"]:
        lines.append(
            f"{r['kernel']:<34} {r['shape']:<28} {r['impl']:<9} {r['ms']:>9.3f} {r['gb_per_s']:>8.1f} "
            f"{baseline[r['kernel']] / r['ms']:>7.2f}x {r['max_err']:>9.2e}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--size", default=None, choices=list(SIZES), help="default: 2160p on CUDA, tiny on CPU")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also time torch.compile of each reference")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: this machine has no usable CUDA GPU")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args.device = "cuda" if cuda else "cpu"
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    args.size = args.size or ("2160p" if cuda else "tiny")
    if args.repeat < 1 or args.warmup < 0:
        p.error("--repeat must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
