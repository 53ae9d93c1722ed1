"""Block swap on a GPU: device memory, seconds and the output of one restore at each offload level, against the
resident run on the same warm model, and what each streamed block costs (with its copy overlapped, and not).

    python -m benchmarks.offload --model 3b-random --device cuda --size 1920x1080 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from PIL import Image

from benchmarks.models import build_upscaler
from benchmarks.restore import parse_size
from seedvr_local.offload_levels import FULL_OFFLOAD, NO_OFFLOAD, OffloadLevel
from seedvr_local.upscaler import UpscaleOptions, Upscaler

GiB = 1024**3


def run(upscaler: Upscaler, image: Image.Image, repeat: int) -> dict:
    seconds, dit = [], []
    for _ in range(repeat):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = upscaler.upscale(image, UpscaleOptions(upscale_factor=2, seed=0))
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        dit.append(result.timings["dit"])
    return {
        "seconds": statistics.median(seconds), "dit_seconds": statistics.median(dit),
        "max_allocated_gib": torch.cuda.max_memory_allocated() / GiB, "pixels": result.pixels,
        "plan": result.plan.describe(),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="3b-random")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--size", type=parse_size, default=(1920, 1080), help="output WxH")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    base = build_upscaler(args.model, device=args.device, dtype=args.dtype)
    pipeline = base.pipeline
    blocks = len(pipeline.dit.blocks)
    width, height = args.size
    generator = torch.Generator().manual_seed(0)
    pixels = (torch.rand(height // 2, width // 2, 3, generator=generator) * 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels)
    rows = []
    reference = None
    levels = [NO_OFFLOAD, OffloadLevel(blocks // 2), OffloadLevel(blocks), FULL_OFFLOAD]
    Upscaler(pipeline, offload=NO_OFFLOAD).upscale(image, UpscaleOptions(upscale_factor=2, seed=0))  # warm up
    for level, overlap in [(level, True) for level in levels] + [(OffloadLevel(blocks), False)]:
        upscaler = Upscaler(pipeline, offload=level)
        placement = pipeline.offload
        if not overlap:  # each block copied only when it is about to run: the cost the side stream hides
            placement._prefetch_after = lambda i: None
        row = run(upscaler, image, args.repeat)
        if not overlap:
            del placement._prefetch_after
        pixels = row.pop("pixels")
        reference = pixels if reference is None else reference
        same = torch.equal(pixels, reference)
        rows.append({"offload": str(level), "overlap": overlap, "same_pixels_as_resident": same, **row})
        print(json.dumps(rows[-1]), flush=True)
    resident, streamed, serial = rows[0], rows[2], rows[-1]
    summary = {
        "model": args.model, "size": f"{width}x{height}", "device": torch.cuda.get_device_name(),
        "swap_seconds_per_block": (streamed["dit_seconds"] - resident["dit_seconds"]) / blocks,
        "swap_seconds_per_block_without_overlap": (serial["dit_seconds"] - resident["dit_seconds"]) / blocks,
    }  # fmt: skip
    print(json.dumps(summary))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"rows": rows, "summary": summary}, file, indent=1)
    return 0 if all(row["same_pixels_as_resident"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
