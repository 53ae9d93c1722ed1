"""End-to-end restoration benchmark: time and peak memory per phase, megapixels per second.

    python -m benchmarks.restore --model tiny --sizes 128x128,256x256
    python -m benchmarks.restore --model 3b-random --device cuda --sizes 1920x1080,3840x2160 --json out.json

`--model` is `tiny` (the built-in tiny model), `3b-random`/`7b-random` (the full-size architecture with
random weights: same speed and memory as the real model) or a weights directory. Sizes are output sizes;
each input is a random image of that size divided by `--factor`. The first run of each size is a warm-up,
reported apart as `first s` (the first-call cost: CUDA context, kernel compilation, `--compile`'s graphs).
A second table gives what each phase cost the process: wall, user and system seconds, minor and major page
faults, for the first run, the median warm run and, with `--idle S`, a run after S seconds of idleness.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass

import torch
from PIL import Image

from seedvr_local import kernels
from benchmarks.measure import PeakMemory, Usage, gib
from benchmarks.models import build_upscaler
from seedvr_local.compilation import compile_pipeline
from seedvr_local.device_memory import keep_freed_cpu_memory
from seedvr_local.image_io import decode_image
from seedvr_local.upscaler import UpscaleOptions

#: --vae-layout: the value of `VideoAutoencoder.channels_last` (None: its automatic choice).
VAE_LAYOUTS = {"auto": None, "channels-last": True, "contiguous": False}
PHASES = ("decode_image", "resize", "encode", "dit", "vae_decode", "color_fix", "finish", "encode_image")


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes look like 1920x1080, got {text!r}") from None
    return width, height


def random_png(width: int, height: int, seed: int = 0) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Run:
    """One request: seconds, peak bytes and process usage (CPU time, page faults) per phase, the output size."""

    times: dict[str, float]
    peaks: dict[str, int]
    usage: dict[str, Usage]
    size: tuple[int, int]

    def total(self) -> Usage:
        return sum(self.usage.values(), Usage.zero())


def run_once(upscaler, png: bytes, factor: float, memory: PeakMemory) -> Run:
    """One request as the server runs it."""
    times: dict[str, float] = {}
    peaks: dict[str, int] = {}
    usage: dict[str, Usage] = {}
    current = {"phase": None, "start": 0.0, "usage": None}

    def enter(phase: str | None) -> None:
        now = Usage.now()
        if current["phase"] is not None:
            usage[current["phase"]] = now - current["usage"]
            peaks[current["phase"]] = memory.peak()
            if current["phase"] in ("decode_image", "encode_image"):
                times[current["phase"]] = time.perf_counter() - current["start"]
        memory.reset()
        current["phase"], current["start"], current["usage"] = phase, time.perf_counter(), Usage.now()

    enter("decode_image")
    image = decode_image(png)
    options = UpscaleOptions(upscale_factor=factor, seed=0)
    result = upscaler.upscale(image, options, progress=enter)
    enter("encode_image")
    result.encode("png")
    enter(None)
    times.update(result.timings)
    return Run(times, peaks, usage, result.size)


def usage_rows(output: str, label: str, run: Run) -> list[dict]:
    """One row per phase and one for the whole run: wall, user and system seconds, page faults."""
    phases = [(p, run.usage[p]) for p in PHASES if p in run.usage] + [("total", run.total())]
    return [{"output": output, "run": label, "phase": phase, **asdict(used)} for phase, used in phases]


def write_profile(upscaler, png: bytes, factor: float, file, rows: int = 40) -> None:
    """The ops of one run that took the most time (device time on CUDA), as torch.profiler's tables."""
    from torch.profiler import ProfilerActivity, profile

    cuda = upscaler.pipeline.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        run_once(upscaler, png, factor, PeakMemory(upscaler.pipeline.device))
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    file.write(prof.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=60))
    file.write("\n\nBy input shape:\n")
    by_shape = prof.key_averages(group_by_input_shape=True)
    file.write(by_shape.table(sort_by=sort_by, row_limit=rows, max_name_column_width=60, max_shapes_column_width=80))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, 3b-random, 7b-random or a weights directory")
    parser.add_argument("--sizes", type=lambda s: [parse_size(v) for v in s.split(",")],
                        default=[(256, 256), (512, 512)], help="output sizes, e.g. 1920x1080,3840x2160")
    parser.add_argument("--factor", type=float, default=2.0, help="upscale factor (input = output / factor)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per size (the median is reported)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--attention", default="auto",
                        help="window attention backend: auto, sdpa, per_window (the naive loop), flash_attn, ...")
    parser.add_argument("--compile", action="store_true",
                        help="seedvr_local.compilation (torch.compile + cuDNN autotuning); the warm-up run's time is "
                             "the first-call cost")
    parser.add_argument("--kernels", default="auto", choices=kernels.MODES, help="fused kernels (see kernels/)")
    parser.add_argument("--vae-layout", default="auto", choices=tuple(VAE_LAYOUTS),
                        help="the VAE activations' layout (auto: channels-last for half precision on CUDA)")
    parser.add_argument("--idle", type=float, action="append", default=[], metavar="S",
                        help="after the timed runs of each size, sit idle S seconds and run once more (repeatable): "
                             "what a server's first request after a quiet spell costs")
    parser.add_argument("--cpu-memory", default="release", choices=("keep", "release"),
                        help="keep: glibc keeps freed memory for the next tensors, as `serve` does on the CPU "
                             "(device_memory.keep_freed_cpu_memory); release: the library's default")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--profile", default=None,
                        help="after the timed runs of each size, profile one more and write the ops that took the "
                             "most time to this file, a section per size")
    args = parser.parse_args(argv)

    if args.cpu_memory == "keep":
        keep_freed_cpu_memory()
    started = time.perf_counter()
    upscaler = build_upscaler(args.model, args.device, args.dtype)
    load_s = time.perf_counter() - started
    dit = upscaler.pipeline.dit
    kernel_backend = dit.set_kernel_backend(args.kernels)
    upscaler.pipeline.vae.set_kernel_backend(args.kernels)  # on the same device: the same choice
    attention = dit.set_window_attention_backend(args.attention)
    if args.compile:
        compile_pipeline(upscaler.pipeline)
    vae = upscaler.pipeline.vae
    vae.channels_last = VAE_LAYOUTS[args.vae_layout]
    device = upscaler.pipeline.device
    memory = PeakMemory(device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    print(f"# {upscaler.description}; attention {attention}; kernels {kernel_backend}; "
          f"compile {'on' if args.compile else 'off'}; VAE {'channels-last' if vae.uses_channels_last else 'contiguous'}; "
          f"loaded in {load_s:.1f}s; {machine}")

    rows, usage = [], []
    profile = open(args.profile, "w") if args.profile else None
    for width, height in args.sizes:
        png = random_png(max(1, round(width / args.factor)), max(1, round(height / args.factor)))
        started = time.perf_counter()
        first = run_once(upscaler, png, args.factor, memory)  # warm-up: allocator, kernels, caches, compilation
        first_s = time.perf_counter() - started
        runs = [run_once(upscaler, png, args.factor, memory) for _ in range(args.repeat)]
        runs.sort(key=lambda run: sum(run.times.values()))
        median = runs[len(runs) // 2]
        times, peaks, size = median.times, median.peaks, median.size
        total = sum(times.values())
        output = f"{size[0]}x{size[1]}"
        rows.append({
            "output": output, "first_s": first_s, "total_s": total,
            "megapixels_per_s": size[0] * size[1] / 1e6 / total,
            "seconds": {p: times.get(p, 0.0) for p in PHASES},
            "peak_gib": {p: gib(peaks.get(p, 0)) for p in PHASES}, "max_peak_gib": gib(max(peaks.values())),
        })  # fmt: skip
        usage += usage_rows(output, "first", first) + usage_rows(output, "warm", median)
        for idle_s in args.idle:
            time.sleep(idle_s)
            usage += usage_rows(output, f"after {idle_s:g} s idle", run_once(upscaler, png, args.factor, memory))
        if profile is not None:
            profile.write(f"## {size[0]}x{size[1]}\n\n")
            write_profile(upscaler, png, args.factor, profile)
            profile.write("\n\n")

    header = f"{'output':>11} {'first s':>8} {'total s':>8} {'MP/s':>7} " + " ".join(f"{p:>12}" for p in PHASES) + f" {'peak GiB':>9}"
    print(header)
    for row in rows:
        cells = " ".join(f"{row['seconds'][p]:>12.3f}" for p in PHASES)
        print(f"{row['output']:>11} {row['first_s']:>8.3f} {row['total_s']:>8.3f} {row['megapixels_per_s']:>7.3f} {cells} "
              f"{row['max_peak_gib']:>9.2f}")
    print(f"\n{'output':>11} {'run':>18} {'phase':>12} {'wall s':>8} {'user s':>8} {'sys s':>8} {'minor faults':>13} "
          f"{'major':>6}")
    for row in usage:
        print(f"{row['output']:>11} {row['run']:>18} {row['phase']:>12} {row['wall_s']:>8.3f} {row['user_s']:>8.3f} "
              f"{row['system_s']:>8.3f} {row['minor_faults']:>13} {row['major_faults']:>6}")
    memory.close()
    if profile is not None:
        profile.close()
    if args.json:
        report = {"model": args.model, "attention": attention, "kernels": kernel_backend, "compile": args.compile, "channels_last": vae.uses_channels_last, "description": upscaler.description, "machine": machine,
                  "torch": torch.__version__, "load_s": load_s, "cpu_memory": args.cpu_memory, "results": rows,
                  "usage": usage}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
