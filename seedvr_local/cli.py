"""`seedvr-local`: upscale images, download weights, serve the fal-compatible API.

The only module that knows every command. It imports nothing heavy: each command's module is imported when that
command runs, and each loads torch only after its arguments are checked, so `--help` and argument errors answer
at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from seedvr_local import __version__
from seedvr_local.cli_plan import __doc__ as plan_doc
from seedvr_local.cli_plan import add_plan_arguments
from seedvr_local.cli_video import VIDEO_FORMAT_NAMES
from seedvr_local.model_home import DOWNLOADABLE_MODELS, MODELS, TINY_MODEL, VARIANTS, default_weights_dir
from seedvr_local.offload_levels import OFFLOAD_CHOICES, parse_offload
from seedvr_local.options import COLOR_FIXES, MAX_SEED, MIN_VAE_TILE, OUTPUT_FORMATS
from seedvr_local.sizes import MAX_UPSCALE_FACTOR, MIN_UPSCALE_FACTOR, TARGET_SHORT_SIDE
from seedvr_local.video.formats import DEFAULT_QUALITY, DEFAULT_WRITE_MODE, OUTPUT_QUALITIES, OUTPUT_WRITE_MODES


def _add_model_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--weights-dir", type=Path, help="directory with the DiT, VAE and pos_emb.pt files")
    group.add_argument(
        "--model",
        choices=MODELS,
        help=f"a model fetched with `seedvr-local download`; {TINY_MODEL}: a toy model with random weights, "
        "built in memory, to try the plumbing without downloading anything (its output is noise)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                        help="compute dtype (default: bf16 on CUDA, fp16 on GPUs older than Ampere, fp32 on CPU)")
    parser.add_argument("--kernels", choices=("auto", "triton", "torch"), default="auto",
                        help="fused Triton kernels or plain PyTorch (default: Triton on CUDA when installed)")
    parser.add_argument("--offload", type=_offload, default="auto", metavar="|".join(OFFLOAD_CHOICES),
                        help="keep weights in host memory while they are not in use: blocks:N streams the DiT's last "
                             "N blocks to the GPU as they run, full also the VAE and the rest; same output, slower. "
                             "auto (default): the least offload each request needs to fit")


def _add_video_arguments(parser: argparse.ArgumentParser) -> None:
    video = parser.add_argument_group("videos")
    video.add_argument("--output-quality", choices=OUTPUT_QUALITIES, default=DEFAULT_QUALITY,
                       help=f"how much detail the encoder keeps (default {DEFAULT_QUALITY})")
    video.add_argument("--output-write-mode", choices=OUTPUT_WRITE_MODES, default=DEFAULT_WRITE_MODE,
                       help=f"encoder speed against file size (default {DEFAULT_WRITE_MODE})")
    video.add_argument("--clip-frames", type=int, default=None, metavar="N",
                       help="frames restored together, 4n+1 (1, 5, 9, ...), 1 or more: longer clips keep motion more "
                            "consistent but need more memory (default: the longest that fits in the device's memory)")
    video.add_argument("--clip-overlap", type=int, default=None, metavar="N",
                       help="frames consecutive clips share and cross-fade, 0 or more, less than a clip (default: "
                            "a few, at most half a clip)")
    video.add_argument("--devices", default=None, metavar="LIST",
                       help="restore each video's clips on several devices at once, one model copy each: all (every "
                            "GPU) or a list such as cuda:0,cuda:1 (default: the one --device)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seedvr-local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("upscale", help="upscale an image, a video or a directory of them")
    up.add_argument("input", type=Path, help="an image or video file, or a directory of them")
    up.add_argument("-o", "--output", type=Path,
                    help="output file, or directory when INPUT is a directory (default: INPUT_upscaled.EXT beside a "
                         "file, INPUT_upscaled/ beside a directory)")
    up.add_argument("--overwrite", action="store_true", help="replace output files that exist (default: refuse)")
    _add_model_arguments(up, required=False)
    size = up.add_mutually_exclusive_group()
    size.add_argument("--upscale-factor", type=float, default=None,
                      help=f"multiply both sides, {MIN_UPSCALE_FACTOR:g} to {MAX_UPSCALE_FACTOR:g} (default 2)")
    size.add_argument("--target-resolution", choices=tuple(TARGET_SHORT_SIDE),
                      help="scale so the output's short side has this many lines, instead of a factor")
    up.add_argument("--seed", type=int, default=None,
                    help=f"0 to {MAX_SEED}: the same seed gives the same output (default: a random one, printed)")
    up.add_argument("--noise-scale", type=float, default=0.1,
                    help="noise added to the input's latent before restoring, 0 to 1 (default 0.1)")
    up.add_argument("--output-format", choices=OUTPUT_FORMATS + VIDEO_FORMAT_NAMES, default=None, metavar="FORMAT",
                    help=f"images: {', '.join(OUTPUT_FORMATS)}; videos: {', '.join(VIDEO_FORMAT_NAMES[::2])} or fal's "
                         f"names ({', '.join(repr(name) for name in VIDEO_FORMAT_NAMES[1::2])}) "
                         "(default: the output file's extension, else the input's format, else png for images and "
                         "mp4 for videos)")
    up.add_argument("--color-fix", choices=COLOR_FIXES, default="wavelet",
                    help="match the output's colours to the input's (default wavelet; none keeps the model's)")
    up.add_argument("--seamless", action="store_true",
                    help="images: the input is a tileable texture; restore it wrapping around its edges so that the "
                         "result tiles too (fal's fal-ai/seedvr/upscale/image/seamless)")
    _add_video_arguments(up)
    up.add_argument("--compile", action="store_true",
                    help="torch.compile the model and autotune cuDNN: faster from the second image of a size on, "
                         "the first image of each size compiles for seconds to minutes")
    up.add_argument("--vae-tile", type=_vae_tile, default="auto", metavar="auto|N",
                    help="VAE tile size in pixels; tiling is exact (no seams), it trades time for memory. "
                         "auto (default): untiled when it fits in memory, else the largest tiles that fit")

    dl = commands.add_parser("download", help="download SeedVR2 weights from Hugging Face")
    dl.add_argument("--model", choices=DOWNLOADABLE_MODELS, required=True,
                    help="the model's size in parameters: 7b needs more than twice the memory and time of 3b; "
                         "7b-sharp is the 7B checkpoint trained for crisper detail")
    dl.add_argument("--variant", choices=VARIANTS, default="official",
                    help="which file of the DiT's weights: official (as published, the default), or the smaller "
                         "community conversions fp16, fp8 and the GGUF files Q8_0 (3b only) and Q4_K_M, which stay "
                         "compact in memory")
    dl.add_argument("--dir", type=Path, default=None, help="target directory (default: the models home)")

    plan = commands.add_parser("plan", help="will a model fit a GPU, and how: predicted memory before any download",
                               description=plan_doc.split("\n\n")[0])
    add_plan_arguments(plan, _offload)

    serve = commands.add_parser("serve", help="run the fal-compatible HTTP server")
    _add_model_arguments(serve, required=False)  # required unless --workers 0: server/cli.py checks which
    from seedvr_local.server.cli import add_serve_arguments  # torch-free: only the flags and their checks

    add_serve_arguments(serve)

    worker = commands.add_parser("worker", help="run job workers (no HTTP) on the API's job database")
    _add_model_arguments(worker, required=True)
    from seedvr_local.server.worker_process import add_worker_arguments  # torch-free, as the serve flags

    add_worker_arguments(worker)

    ev = commands.add_parser("eval", help="measure quality and speed on a dataset, against baselines and other upscalers")
    _add_model_arguments(ev, required=False)
    from seedvr_local.cli_eval import add_eval_arguments  # torch-free, as the serve flags

    add_eval_arguments(ev)
    return parser


def _offload(value: str) -> str:
    try:
        parse_offload(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("offload ")) from None
    return value


def _vae_tile(value: str) -> str | int:
    if value == "auto":
        return value
    try:
        tile = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a number of pixels, got {value!r}") from None
    if tile < MIN_VAE_TILE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_VAE_TILE} pixels, got {tile}")
    return tile


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "upscale":
            from seedvr_local.cli_upscale import run_upscale
            from seedvr_local.cli_video import run_upscale_command

            return run_upscale_command(args, run_images=run_upscale)  # videos there, images in run_upscale
        if args.command == "download":
            return _run_download(args)
        if args.command == "eval":
            from seedvr_local.cli_eval import run_eval

            return run_eval(args)
        if args.command == "plan":
            from seedvr_local.cli_plan import run_plan

            return run_plan(args)
        if args.command == "worker":
            from seedvr_local.server.worker_process import run_worker

            return run_worker(args)
        from seedvr_local.server.cli import run_serve

        return run_serve(args)
    except KeyboardInterrupt:
        print("seedvr-local: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a user sees one line; SEEDVR_DEBUG=1 shows the traceback
        if os.environ.get("SEEDVR_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"seedvr-local: error: {message}", file=sys.stderr)
        return 2


def _run_download(args: argparse.Namespace) -> int:
    from seedvr_local.weights.download import download

    dest = args.dir or default_weights_dir(args.model, args.variant)
    path = download(args.model, args.variant, dest)
    print(f"SeedVR2 {args.model.upper()} ({args.variant}) is in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
