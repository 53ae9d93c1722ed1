"""End-to-end video restoration benchmark: frames per second overall and seconds per phase.

    python -m benchmarks.video --model tiny --input 32x24 --frames 45 --clip-frames 21
    python -m benchmarks.video --model 3b-random --device cuda --input 960x540 --frames 121 --clip-frames 33 --json out.json

`--model` is `tiny` (the reference test bundle), `3b-random`/`7b-random` (full-size architecture, random
weights: same speed and memory) or a weights directory. The source is a synthetic moving pattern of `--input`
size with a sine-wave audio track, written to a temporary file; the output size follows `--factor`. Phases:
decode (source frames), encode (VAE encode), dit, vae_decode, encode_video (output frames), and the small ones
(resize, color_fix, blend, finish). The first clip's one-time costs are included: run more frames to dilute them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.models import build_upscaler
from benchmarks.restore import parse_size
from seedvr_local.video import VideoOptions, VideoRestorer, output_format
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
    parser.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    fmt = output_format(args.format)
    upscaler = build_upscaler(args.weights_dir or args.model, args.device, args.dtype)
    device = upscaler.pipeline.device
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    print(f"# {upscaler.description}; {args.frames} frames of {args.input[0]}x{args.input[1]} x{args.factor:g}, "
          f"clips of {args.clip_frames}, {fmt.fal_name}; {machine}")
    options = VideoOptions(
        upscale_factor=args.factor, seed=0, output_format=fmt.name, clip_frames=args.clip_frames,
        overlap_frames=args.overlap,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        source = make_video(Path(tmp) / "source.mp4", *args.input, frames=args.frames, fps=args.fps)
        result = VideoRestorer(upscaler.pipeline).restore(source, Path(tmp) / f"out{fmt.extension}", options)
    seconds = {phase: result.timings.get(phase, 0.0) for phase in PHASES}
    row = {
        "output": f"{result.width}x{result.height}", "frames": result.frames, "total_s": result.seconds,
        "frames_per_s": result.frames_per_second, "seconds": seconds,
        "frames_per_s_by_phase": {p: (result.frames / s if s > 0 else None) for p, s in seconds.items()},
    }  # fmt: skip
    print(f"{'output':>11} {'frames':>6} {'total s':>8} {'fps':>7} " + " ".join(f"{p:>12}" for p in PHASES))
    cells = " ".join(f"{seconds[p]:>12.3f}" for p in PHASES)
    print(f"{row['output']:>11} {result.frames:>6} {result.seconds:>8.3f} {result.frames_per_second:>7.3f} {cells}")
    print("  (phase columns: seconds summed over the whole video)")
    if args.json:
        report = {"model": args.weights_dir or args.model, "description": upscaler.description, "machine": machine,
                  "torch": torch.__version__, "clip_frames": args.clip_frames, "format": fmt.name, "results": [row]}
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
