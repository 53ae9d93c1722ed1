"""Peak memory and time of the VAE encode and decode for a series of output sizes, untiled and with exact tiling,
next to the memory model's prediction (`seedvr_local/memory_cost.py`).

    python -m benchmarks.memory                                        # CPU, fp32, 256^2 .. 2048^2
    python -m benchmarks.memory --sizes 512,1024 --tilings untiled,512/1,256/8 --phases decode
    python -m benchmarks.memory --device cuda --dtype bf16 --sizes 1024,2048,3840x2160,7680x4320
    python -m benchmarks.memory --restore --sizes 512                  # whole restore, tiny DiT, per phase
    python -m benchmarks.memory --dit-layers 2 --sizes 512,1024        # 3B DiT width, 2 layers: DiT phase

The VAE is the full-size SeedVR2 architecture with random weights (they time and take memory exactly like the
real ones). A tiling is written `TILE/STORE_SCALE` (`512/1`: 512-pixel tiles keeping every block's output;
`256/8`: 256-pixel tiles, recomputing everything finer than 1/8 resolution). Peak memory is measured above the
memory in use before the phase (the weights): CUDA max allocated, or the CPU resident set size. Each measurement
runs in a fresh process: a CPU process keeps freed memory in its allocator, which would hide later peaks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.measure import PeakMemory, gib, rss_bytes

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SIZES = "256,512,1024,2048"
DEFAULT_TILINGS = "untiled,512/1,256/8"


def parse_size(text: str) -> tuple[int, int]:
    """`N` (square) or `WxH`."""
    w, _, h = text.lower().partition("x")
    return int(w), int(h or w)


def parse_tiling(text: str):
    from seedvr_local.models.vae_tiling import VAETiling

    if text == "untiled":
        return None
    tile, _, scale = text.partition("/")
    return VAETiling(int(tile), int(scale or 1))


def tiling_name(tiling) -> str:
    return "untiled" if tiling is None else f"{tiling.core}/{tiling.store_scale}"


# ------------------------------------------------------------------------------------------------ one process


def _device_and_dtype(spec: dict) -> tuple[torch.device, torch.dtype]:
    from seedvr_local.devices import resolve_device, resolve_dtype

    device = resolve_device(spec["device"])
    return device, resolve_dtype(spec["dtype"], device)


def _meta_vae():
    """The full-size SeedVR2 VAE without weights: what the memory model needs."""
    from seedvr_local.models.vae import VAEConfig, VideoAutoencoder

    with torch.device("meta"):
        return VideoAutoencoder.from_vae_config(VAEConfig.seedvr2())


def _random_vae(device: torch.device, dtype: torch.dtype):
    from benchmarks.models import materialize_random_
    from seedvr_local.models.vae import VAEConfig, VideoAutoencoder
    from seedvr_local.weights.bundle import parameters_on_meta

    with parameters_on_meta():
        vae = VideoAutoencoder.from_vae_config(VAEConfig.seedvr2())
    materialize_random_(vae, torch.Generator(device).manual_seed(0), dtype)
    return vae.to(device=device).eval().requires_grad_(False)


def _in_use(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else rss_bytes()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_vae(spec: dict) -> dict:
    """One VAE phase of one size and tiling: peak bytes above the weights, seconds, and the prediction."""
    from seedvr_local.memory_cost import VAEMemoryModel

    device, dtype = _device_and_dtype(spec)
    width, height = spec["size"]
    frames, phase, tiling = spec["frames"], spec["phase"], parse_tiling(spec["tiling"])
    vae = _random_vae(device, dtype)
    generator = torch.Generator().manual_seed(0)
    gc.collect()
    meter = PeakMemory(device)
    base = _in_use(device)
    meter.reset()
    started = time.perf_counter()
    if phase == "encode":
        x = (torch.rand(1, 3, frames, height, width, generator=generator) * 2 - 1).to(device, dtype)
        out = vae.encode(x, tiling)
    else:
        z = torch.randn(1, *vae.latent_shape(frames, height, width), generator=generator).to(device, dtype)
        out = vae.decode(z, tiling)
    _sync(device)
    seconds = time.perf_counter() - started
    peak = meter.peak() - base
    meter.close()
    del out
    itemsize = torch.empty((), dtype=dtype).element_size()
    predicted = VAEMemoryModel(vae, device).bytes(phase, frames, height, width, tiling, itemsize)
    return {**spec, "peak": peak, "seconds": seconds, "predicted": predicted}


@torch.no_grad()
def measure_dit(spec: dict) -> dict:
    """The 3B DiT's width with `dit_layers` layers (random weights) on a random latent: the DiT phase's peak."""
    from benchmarks.models import TEXT_TOKENS, materialize_random_
    from seedvr_local.memory_cost import PhaseCosts
    from seedvr_local.models.nadit import DiTConfig, NaDiT
    from seedvr_local.pipeline import RestorationPipeline
    from seedvr_local.weights.bundle import parameters_on_meta

    device, dtype = _device_and_dtype(spec)
    width, height = spec["size"]
    layers = spec["dit_layers"]
    full = DiTConfig.seedvr2_3b()
    config = DiTConfig.checked(**{
        **full, "num_layers": layers, "mm_layers": min(full.mm_layers, layers - 1),
        "window": full.window[:layers], "window_method": full.window_method[:layers],
    })  # fmt: skip
    with parameters_on_meta():
        dit = NaDiT.from_config(config)
    generator = torch.Generator(device).manual_seed(0)
    materialize_random_(dit, generator, dtype)
    dit = dit.to(device=device).eval().requires_grad_(False)
    dit.set_window_attention_backend(spec.get("attention", "auto"))
    pipeline = RestorationPipeline(dit, _meta_vae().to(dtype), torch.empty(0))
    _, *latent_size = pipeline.latent_shape(spec["frames"], height, width)
    latent = (config.vid_in_channels, *latent_size)
    text = torch.randn(TEXT_TOKENS, config.txt_in_dim, generator=generator, device=device, dtype=dtype)
    gc.collect()
    meter = PeakMemory(device)
    base = _in_use(device)
    meter.reset()
    started = time.perf_counter()
    vid = torch.randn(latent, generator=generator, device=device, dtype=dtype)
    (out,) = dit.forward_samples([vid], [text], torch.full((1,), 1000.0, device=device))
    _sync(device)
    seconds = time.perf_counter() - started
    peak = meter.peak() - base
    meter.close()
    del out
    predicted = PhaseCosts(pipeline, device).dit_bytes(pipeline.padded_frames(spec["frames"]), height, width)
    return {**spec, "peak": peak, "seconds": seconds, "predicted": predicted}


@torch.no_grad()
def measure_restore(spec: dict) -> dict:
    """The whole restore (tiny DiT, full-size VAE) with per-phase peaks in one process."""
    from seedvr_local.memory_cost import PhaseCosts
    from seedvr_local.pipeline import RestorationPipeline, RestoreNoises
    from seedvr_local.weights.tiny import build_tiny_models

    device, dtype = _device_and_dtype(spec)
    width, height = spec["size"]
    tiling = parse_tiling(spec["tiling"])
    tiny = build_tiny_models(device=device, dtype=dtype)
    pipeline = RestorationPipeline(tiny.dit, _random_vae(device, dtype), tiny.pos_emb)
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(3, spec["frames"], height, width, generator=generator) * 2 - 1
    noises = RestoreNoises.draw(pipeline.latent_shape(spec["frames"], height, width), seed=0)
    gc.collect()
    meter = PeakMemory(device)
    peaks, seconds, state = {}, {}, {"phase": None}

    def on_phase(phase: str | None) -> None:
        _sync(device)
        now = time.perf_counter()
        if state["phase"] is not None:
            peaks[state["phase"]] = meter.peak() - state["base"]
            seconds[state["phase"]] = now - state["started"]
        state.update(phase=phase, base=_in_use(device), started=now)
        meter.reset()

    pipeline.restore(video, noises, on_phase=on_phase, vae_tiling=tiling)
    on_phase(None)
    meter.close()
    predicted = PhaseCosts(pipeline).estimate(width, height, spec["frames"], tiling)
    return {**spec, "peaks": peaks, "phase_seconds": seconds, "predicted_phases": predicted}


def run_worker(spec: dict) -> dict:
    from seedvr_local.device_memory import use_mmap_for_large_cpu_tensors

    use_mmap_for_large_cpu_tensors()  # as the Upscaler does on the CPU
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if spec["phase"] == "restore":
        return measure_restore(spec)
    if spec["phase"] == "dit":
        return measure_dit(spec)
    return measure_vae(spec)


def spawn(spec: dict, timeout: float | None) -> dict:
    """`run_worker(spec)` in a fresh Python process."""
    cmd = [sys.executable, "-m", "benchmarks.memory", "--worker", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return {**spec, "error": lines[-1] if lines else f"exit code {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------------- the table


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if device.startswith("cuda") and torch.cuda.is_available():
        text = f"{torch.cuda.get_device_name()} ({text})"
    return text


def _cell(row: dict | None) -> tuple[str, str, str]:
    if row is None:
        return ("", "", "")
    if "error" in row:
        return ("error", "", row["error"][:40])
    return (f"{gib(row['peak']):.2f}", f"{gib(row['predicted']):.2f}", f"{row['seconds']:.1f}")


def _repredict(row: dict) -> dict:
    """`row` with the prediction of the current memory model."""
    from seedvr_local.memory_cost import VAEMemoryModel

    if "error" in row:
        return row
    half = row.get("dtype") in ("bf16", "fp16") or (row.get("dtype") is None and row["device"].startswith("cuda"))
    itemsize = 2 if half else 4
    (width, height), tiling = row["size"], parse_tiling(row["tiling"])
    model = VAEMemoryModel(_meta_vae(), "cuda" if row["device"].startswith("cuda") else "cpu")
    return {**row, "predicted": model.bytes(row["phase"], row["frames"], height, width, tiling, itemsize)}


def print_vae_table(rows: list[dict]) -> None:
    keys = sorted({(r["size"][0], r["size"][1], r["tiling"]) for r in rows}, key=lambda k: (k[0] * k[1], k[2]))
    by = {(r["size"][0], r["size"][1], r["tiling"], r["phase"]): r for r in rows}
    print("| output | tiling | encode peak GiB | predicted | encode s | decode peak GiB | predicted | decode s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for w, h, tiling in keys:
        enc, dec = _cell(by.get((w, h, tiling, "encode"))), _cell(by.get((w, h, tiling, "decode")))
        print(f"| {w}x{h} | {tiling} | " + " | ".join(enc + dec) + " |")


def print_rows(rows: list[dict], kind: str) -> None:
    if kind == "dit":
        print("| output | DiT layers | peak GiB | predicted | seconds |\n| --- | ---: | ---: | ---: | ---: |")
        for r in rows:
            peak, pred, sec = _cell(r)
            print(f"| {r['size'][0]}x{r['size'][1]} | {r['dit_layers']} | {peak} | {pred} | {sec} |")
        return
    phases = ("encode", "dit", "vae_decode", "color_fix")
    print("| output | tiling | " + " | ".join(f"{p} GiB (pred) / s" for p in phases) + " |")
    print("| --- | --- |" + " ---: |" * len(phases))
    for r in rows:
        if "error" in r:
            print(f"| {r['size'][0]}x{r['size'][1]} | {r['tiling']} | error: {r['error']} |")
            continue
        pred = {**r["predicted_phases"], "vae_decode": r["predicted_phases"]["decode"]}
        cells = [
            f"{gib(r['peaks'][p]):.2f} ({gib(pred[p]):.2f}) / {r['phase_seconds'][p]:.1f}" for p in phases
        ]
        print(f"| {r['size'][0]}x{r['size'][1]} | {r['tiling']} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"N or WxH, comma separated (default {DEFAULT_SIZES})")
    parser.add_argument("--tilings", default=DEFAULT_TILINGS,
                        help=f"untiled or TILE/STORE_SCALE, comma separated (default {DEFAULT_TILINGS})")
    parser.add_argument("--phases", default="encode,decode", help="encode, decode (default both)")
    parser.add_argument("--restore", action="store_true", help="the whole restore per phase (tiny DiT)")
    parser.add_argument("--dit-layers", type=int, default=0, help="measure the DiT phase: 3B width, N layers")
    parser.add_argument("--attention", default="auto",
                        help="with --dit-layers: the window attention backend (per_window uses the packed layout)")
    parser.add_argument("--frames", type=int, default=1, help="frames (4n+1; default 1, an image)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument("--skip", default="", help="SIZE:TILING pairs to leave out, e.g. 2048:256/8")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--table-from", type=Path, help="reprint the VAE table of earlier --json rows, with the "
                        "current model's predictions")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    if args.table_from:
        rows = [_repredict(row) for path in [args.table_from] for row in json.loads(path.read_text())]
        print_vae_table(rows)
        return 0

    base = {"device": args.device, "dtype": args.dtype, "frames": args.frames, "threads": args.threads,
            "attention": args.attention}
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    skip = {tuple(item.split(":")) for item in args.skip.split(",") if item}
    if args.dit_layers:
        specs = [{**base, "phase": "dit", "size": s, "dit_layers": args.dit_layers, "tiling": "untiled"} for s in sizes]
        kind = "dit"
    else:
        tilings = [t for t in args.tilings.split(",") if t]
        phases = ["restore"] if args.restore else [p for p in args.phases.split(",") if p]
        specs = [
            {**base, "phase": phase, "size": size, "tiling": tiling_name(parse_tiling(tiling))}
            for size in sizes
            for tiling in tilings
            for phase in phases
            if (f"{size[0]}" if size[0] == size[1] else f"{size[0]}x{size[1]}", tiling) not in skip
        ]
        kind = "restore" if args.restore else "vae"
    print(f"machine: {machine(args.device)}", file=sys.stderr)
    rows = []
    for spec in specs:
        row = spawn(spec, args.timeout)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"\nmachine: {machine(args.device)}")
    if kind == "vae":
        print_vae_table(rows)
    else:
        print_rows(rows, kind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
