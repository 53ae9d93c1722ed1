"""`seedvr-local plan`: will a model in a weights format fit a GPU, and with which settings, before any download.

Prints the predicted peak of each phase and the settings a run would use (offload, VAE tile, clip length), or one
line saying it cannot fit and the smallest change that would. Exit codes: 0 fits, 1 does not fit, 2 bad arguments.
Arguments are checked without torch; the plan itself builds the models on the "meta" device (no weights).
"""

from __future__ import annotations

import argparse
import json
import re


from seedvr_local.model_home import DOWNLOADABLE_MODELS
from seedvr_local.weight_formats import FORMAT_NAMES

GiB = 1024**3
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
#: Exit code of a plan that does not fit (an answer, not an error).
DOES_NOT_FIT = 1


def memory_size(text: str) -> int:
    """`8GiB`, `7.5 GB`, `8000MiB` -> bytes (GB is 10^9, GiB 2^30)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"expected a size with a unit such as 8GiB or 12GB, got {text!r}")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 bytes, got {text!r}")
    return size


def output_size(text: str) -> tuple[int, int]:
    """`1920x1080` -> (1920, 1080)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match.group(1)), int(match.group(2))) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1920x1080, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def frame_count(text: str) -> int:
    try:
        frames = int(text)
    except ValueError:
        frames = 0
    if frames < 1:
        raise argparse.ArgumentTypeError(f"must be a number of frames, 1 or more, got {text!r}")
    return frames


def add_plan_arguments(parser: argparse.ArgumentParser, offload_type) -> None:
    parser.add_argument("--model", choices=DOWNLOADABLE_MODELS, required=True, help="the model's size")
    parser.add_argument("--weights-format", choices=FORMAT_NAMES, default="bf16", metavar="FORMAT",
                        help=f"how the DiT's weights are stored: {', '.join(FORMAT_NAMES)} (default bf16)")
    parser.add_argument("--device-memory", type=memory_size, required=True, metavar="SIZE",
                        help="the GPU's memory, such as 8GiB or 24GB")
    parser.add_argument("--output", type=output_size, required=True, metavar="WxH",
                        help="the output's size in pixels, such as 1920x1080")
    parser.add_argument("--frames", type=frame_count, default=1, metavar="N",
                        help="frames restored together: 1 for an image (default), a clip's length for a video")
    parser.add_argument("--offload", type=offload_type, default="auto", metavar="auto|none|blocks:N|full",
                        help="as for upscale (default auto: the least offload that fits)")
    parser.add_argument("--json", action="store_true", help="answer as one JSON object")


def run_plan(args: argparse.Namespace) -> int:
    from seedvr_local.format_plan import plan_for
    from seedvr_local.offload_levels import parse_offload

    width, height = args.output
    answer = plan_for(args.model, args.weights_format, args.device_memory, width, height, args.frames,
                      parse_offload(args.offload))  # fmt: skip
    if args.json:
        print(json.dumps(answer.to_json()))
    elif not answer.fits:
        change = answer.suggestion or "nothing fits, not even the smallest output with every saving"
        print(f"{_what(answer)} does not fit: {answer.reason}; {change}")
    else:
        print(_report(answer))
    return 0 if answer.fits else DOES_NOT_FIT


def _what(answer) -> str:
    frames = f", {answer.frames} frames" if answer.frames > 1 else ""
    return (f"SeedVR2 {answer.model.upper()} ({answer.weights_format}) at {answer.width}x{answer.height}{frames} on "
            f"{_gib(answer.device_memory)}")  # fmt: skip


def _report(answer) -> str:
    plan = answer.plan
    lines = [f"{_what(answer)}: fits, peak {_gib(answer.peak_bytes)} of {_gib(answer.budget)} usable", "",
             f"{'phase':<10} {'peak':>10} {'weights':>10}"]  # fmt: skip
    for phase, peak in answer.peaks.items():
        lines.append(f"{phase:<10} {_gib(peak):>10} {_gib(answer.weights.get(phase, 0)):>10}")
    tiling = "untiled" if plan.vae_tiling is None else (
        f"tiles of {plan.vae_tiling.core} px, store scale {plan.vae_tiling.store_scale}"
    )
    lines += ["", f"offload: {plan.offload}", f"VAE: {tiling}", f"clip: {answer.frames} frame" + "s" * (answer.frames > 1)]
    return "\n".join(lines)


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


