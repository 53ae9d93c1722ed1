"""End-to-end video restoration benchmark: frames per second overall and seconds per phase.

    python -m benchmarks.video --model tiny --input 32x24 --frames 45 --clip-frames 21
    python -m benchmarks.video --model 3b-random --device cuda --input 960x540 --frames 121 --clip-frames 33 --json out.json
    python -m benchmarks.video --model 3b-random --devices all --input 960x540 --frames 241 --clip-frames 33

`--model` is `tiny` (the built-in tiny model), `3b-random`/`7b-random` (full-size architecture, random
weights: same speed and memory) or a weights directory. The source is a synthetic moving pattern of `--input`
size with a sine-wave audio track, written to a temporary file; the output size follows `--factor`. Phases:
decode (source frames), encode (VAE encode), dit, vae_decode, encode_video (output frames), and the small ones
(resize, color_fix, blend, finish). The first clip's one-time costs are included: run more frames to dilute them.
`--devices` (a list such as cuda:0,cuda:1, or all) restores the clips on one worker process per device
(`seedvr_local.video.pool`); the phase columns then sum the seconds of every device, so they can exceed the total.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

from benchmarks.models import build_upscaler
from benchmarks.restore import parse_size
from seedvr_local.cli_video import parse_devices
from seedvr_local.video import VideoOptions, VideoRestorer, output_format
from seedvr_local.video.pool import ClipPool, cpu_threads
from seedvr_local.video.samples import make_video

PHASES = ("decode", "resize", "encode", "dit", "vae_decode", "color_fix", "blend", "finish", "encode_video")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, 3b-random, 7b-random or a weights directory")
    parser.add_argument("--weights-dir", default=None, help="a weights directory (same as --model DIR)")
    parser.add_argument("--input", type=parse_size, default=(32, 24), help="source frame size, e.g. 960x540")
    parser.add_argument("--frames", type=int, default=45, help="source frames")
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--factor", type=float, default=2.0, help="upscale factor")
    parser.add_argument("--clip-frames", type=int, default=21, help="frames per clip (4n+1)")
    parser.add_argument("--overlap", type=int, default=None, help="frames shared by consecutive clips")
    parser.add_argument("--format", default="mp4", help="mp4, webm, mov or gif")
    parser.add_argument("--device", default=None)
    parser.add_argument("--devices", default=None, help="restore the clips on several devices: all, or cuda:0,cuda:1")
    parser.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    fmt = output_format(args.format)
    model = args.weights_dir or args.model
    devices = parse_devices(args.devices) if args.devices else [args.device]
    options = VideoOptions(
        upscale_factor=args.factor, seed=0, output_format=fmt.name, clip_frames=args.clip_frames,
        overlap_frames=args.overlap,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        source = make_video(Path(tmp) / "source.mp4", *args.input, frames=args.frames, fps=args.fps)
        output = Path(tmp) / f"out{fmt.extension}"
        if len(devices) > 1:
            with ClipPool(functools.partial(build_upscaler, model, dtype=args.dtype), devices) as pool:
                description = f"{len(devices)} x {pool.descriptions[0]}"
                machine = _machine(torch.device(devices[0]), workers=len(devices))
                _header(args, description, fmt, machine)
                result = VideoRestorer(clips=pool).restore(source, output, options)
        else:
            upscaler = build_upscaler(model, args.device, args.dtype)
            description, machine = upscaler.description, _machine(upscaler.pipeline.device)
            _header(args, description, fmt, machine)
            result = VideoRestorer(upscaler.pipeline).restore(source, output, options)
            devices = [str(upscaler.pipeline.device)]
    seconds = {phase: result.timings.get(phase, 0.0) for phase in PHASES}
    row = {
        "output": f"{result.width}x{result.height}", "frames": result.frames, "total_s": result.seconds,
        "frames_per_s": result.frames_per_second, "seconds": seconds,
        "frames_per_s_by_phase": {p: (result.frames / s if s > 0 else None) for p, s in seconds.items()},
        "devices": devices, "clips_by_worker": dict(Counter(result.clip_workers)),
    }  # fmt: skip
    print(f"{'output':>11} {'frames':>6} {'total s':>8} {'fps':>7} " + " ".join(f"{p:>12}" for p in PHASES))
    cells = " ".join(f"{seconds[p]:>12.3f}" for p in PHASES)
    print(f"{row['output']:>11} {result.frames:>6} {result.seconds:>8.3f} {result.frames_per_second:>7.3f} {cells}")
    print("  (phase columns: seconds summed over the whole video" + (" and every device)" if len(devices) > 1 else ")"))
    if len(devices) > 1:
        print("  clips per worker: " + ", ".join(f"{w} {n}" for w, n in row["clips_by_worker"].items()))
    if args.json:
        report = {"model": model, "description": description, "machine": machine,
                  "torch": torch.__version__, "clip_frames": args.clip_frames, "format": fmt.name, "results": [row]}
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _machine(device: torch.device, workers: int = 1) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads() if workers == 1 else cpu_threads([str(device)] * workers)
    return f"{platform.processor() or 'cpu'}, {threads} threads" + (" per worker" if workers > 1 else "")


def _header(args: argparse.Namespace, description: str, fmt, machine: str) -> None:
    print(f"# {description}; {args.frames} frames of {args.input[0]}x{args.input[1]} x{args.factor:g}, "
          f"clips of {args.clip_frames}, {fmt.fal_name}; {machine}")


if __name__ == "__main__":
    sys.exit(main())
