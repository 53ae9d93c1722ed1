"""`seedvr-local eval`: restore a dataset with this model, resize baselines and other upscalers, and report
quality and speed side by side (`seedvr_local.evaluation` does the work).

Torch-free at import: the flags and their checks answer at once; the model loads only when an item needs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import sys
from pathlib import Path

from seedvr_local.model_home import TINY_MODEL, find_installed_weights
from seedvr_local.options import COLOR_FIXES, MAX_SEED, RestoreOptions, check_vae_tile

_DEFAULTS = RestoreOptions()
#: Files of an evaluation folder that say it is one (and that a rerun must match).
_RUN_FILE = "run.json"


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags after the model's (which `seedvr_local.cli` adds, as for every command)."""
    parser.add_argument("dataset", type=Path,
                        help="a folder with HR/ and LR/ (paired), HR/ alone (inputs made by the degradation below), "
                             "or inputs alone (no-reference metrics only); entries are images, videos or folders "
                             "of frames")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for the report, the outputs and the per-item results; a rerun resumes there")
    parser.add_argument("--scale", type=int, default=4, help="upscale factor, 1 or more (default 4)")
    parser.add_argument("--metrics", default=None, metavar="LIST",
                        help="comma-separated: psnr, ssim (Y channel, border crop = scale), psnr_rgb, ssim_rgb, "
                             "lpips, dists, niqe, musiq, clipiqa (pyiqa, from weights on disk), tdiff (videos) "
                             "(default: psnr,ssim,lpips,dists,niqe,musiq,clipiqa, and tdiff for videos)")
    parser.add_argument("--metric-weights", type=Path, default=None, metavar="DIR",
                        help="where the pretrained metrics' weights are (used as TORCH_HOME and HF_HOME); "
                             "default: pyiqa's own cache. Nothing is downloaded: a metric without weights is skipped")
    parser.add_argument("--baseline", default="", metavar="LIST",
                        help="resize baselines to add, comma-separated: bicubic, lanczos, bilinear, nearest")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=COMMAND",
                        help="another upscaler, run per item as COMMAND with {in} and {out} replaced by the input "
                             "and output paths (no shell); repeatable")
    parser.add_argument("--compare-timeout", type=float, default=None, metavar="S",
                        help="seconds one --compare command may take per item, 1 or more (default 600)")
    parser.add_argument("--no-model", action="store_true",
                        help="leave this model out (compare baselines and commands only)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate the first N items only, 1 or more")
    degrade = parser.add_argument_group("degradation of HR-only datasets (bicubic downscale by --scale, then these)")
    degrade.add_argument("--degrade-blur", type=float, default=0.0, metavar="SIGMA",
                         help="Gaussian blur before downscaling, sigma in HR pixels, 0 or more (default 0: none)")
    degrade.add_argument("--degrade-noise", type=float, default=0.0, metavar="SIGMA",
                         help="Gaussian noise after downscaling, sigma in 8-bit levels, 0 or more (default 0: none)")
    degrade.add_argument("--degrade-jpeg", type=int, default=None, metavar="Q",
                         help="JPEG compression last, quality 1 to 95 (default: none)")
    restore = parser.add_argument_group("restore options of this model (as for upscale)")
    restore.add_argument("--seed", type=int, default=None,
                         help=f"0 to {MAX_SEED} (default: one drawn for the run, recorded and reused on resume)")
    restore.add_argument("--noise-scale", type=float, default=_DEFAULTS.noise_scale,
                         help=f"noise added to the input's latent, 0 to 1 (default {_DEFAULTS.noise_scale:g})")
    restore.add_argument("--color-fix", choices=COLOR_FIXES, default=_DEFAULTS.color_fix,
                         help=f"colour correction toward the input (default {_DEFAULTS.color_fix})")
    restore.add_argument("--vae-tile", default="auto", metavar="auto|N",
                         help="VAE tile size in pixels, or auto (default: untiled when it fits)")
    restore.add_argument("--clip-frames", type=int, default=None, metavar="N",
                         help="video frames restored together, 4n+1, 1 or more (default: the longest that fits)")
    restore.add_argument("--clip-overlap", type=int, default=None, metavar="N",
                         help="frames consecutive clips share, 0 or more (default: a few)")


def _vae_tile(value: str) -> str | int:
    tile: str | int = value if value == "auto" else int(value) if value.isdigit() else value
    check_vae_tile(tile)
    return tile


def _settings(args: argparse.Namespace) -> dict:
    """What must not change between a run and its resumption (the item limit may)."""
    return {
        "dataset": str(args.dataset.resolve()), "scale": args.scale, "metrics": list(args.metric_names),
        "model": None if args.no_model else {"model": args.model, "weights_dir": str(args.weights_dir or ""),
                                              "dtype": args.dtype, "device": args.device},
        "options": {"noise_scale": args.noise_scale, "color_fix": args.color_fix, "vae_tile": args.vae_tile,
                    "clip_frames": args.clip_frames, "clip_overlap": args.clip_overlap},
        "baselines": args.baseline_names, "compare": dict(args.compare_pairs),
        "degradation": {"blur_sigma": args.degrade_blur, "noise_sigma": args.degrade_noise,
                        "jpeg_quality": args.degrade_jpeg},
    }  # fmt: skip


def _check(args: argparse.Namespace) -> None:
    from seedvr_local.evaluation.metrics import DEFAULT_METRICS, parse_metrics
    from seedvr_local.evaluation.methods import parse_baselines, parse_compare

    if args.scale < 1:
        raise ValueError(f"--scale must be 1 or more, got {args.scale}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be 1 or more, got {args.limit}")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed must be between 0 and {MAX_SEED}, got {args.seed}")
    if not 0 <= args.noise_scale <= 1:
        raise ValueError(f"--noise-scale must be between 0 and 1, got {args.noise_scale:g}")
    if args.compare_timeout is not None and args.compare_timeout < 1:
        raise ValueError(f"--compare-timeout must be 1 or more seconds, got {args.compare_timeout:g}")
    if args.clip_frames is not None and (args.clip_frames < 1 or args.clip_frames % 4 != 1):
        raise ValueError(f"--clip-frames must be 4n+1 (1, 5, 9, ...), got {args.clip_frames}")
    args.vae_tile = _vae_tile(args.vae_tile)
    args.metric_names = parse_metrics(args.metrics) if args.metrics else DEFAULT_METRICS
    args.baseline_names = parse_baselines(args.baseline)
    args.compare_pairs = [parse_compare(text) for text in args.compare]
    names = ([] if args.no_model else ["seedvr2"]) + args.baseline_names + [n for n, _ in args.compare_pairs]
    if not names:
        raise ValueError("--no-model leaves nothing to evaluate: add --baseline or --compare")
    if len(set(names)) != len(names):
        raise ValueError(f"two methods are named {next(n for n in names if names.count(n) > 1)!r}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"{args.out}: exists and is not a folder")
    if not args.no_model and args.model != TINY_MODEL:  # missing weights are said before any item is prepared
        args.weights_dir = args.weights_dir or find_installed_weights(args.model or "3b")


def _resume_seed(args: argparse.Namespace, settings: dict) -> int:
    """The run's seed: the one recorded in DIR when resuming (whose settings must match), else --seed or a new one."""
    run_file = args.out / _RUN_FILE
    if run_file.exists():
        recorded = json.loads(run_file.read_text())
        changed = sorted(k for k in settings if recorded.get("settings", {}).get(k) != settings[k])
        if args.seed is not None and args.seed != recorded.get("seed"):
            changed.append("seed")
        if changed:
            raise ValueError(f"{args.out} holds a run with other settings ({', '.join(changed)}): "
                             "use another --out, or the same settings to resume it")
        return recorded["seed"]
    return args.seed if args.seed is not None else secrets.randbelow(MAX_SEED + 1)


def run_eval(args: argparse.Namespace) -> int:
    _check(args)
    from seedvr_local.evaluation import report
    from seedvr_local.evaluation.datasets import open_dataset
    from seedvr_local.evaluation.degradations import Degradation
    from seedvr_local.evaluation.methods import (
        DEFAULT_COMPARE_TIMEOUT_S, MODEL_METHOD, CommandMethod, ResizeMethod, load_model,
    )  # fmt: skip
    from seedvr_local.evaluation.metrics import LIBRARY_METRICS, VIDEO_METRICS
    from seedvr_local.evaluation.runner import MethodSpec, ProgressBar, build_metrics, run

    degradation = Degradation(args.scale, args.degrade_blur, args.degrade_noise, args.degrade_jpeg)
    degradation.check()
    dataset = open_dataset(args.dataset, args.scale, degradation, args.limit)
    if args.metrics is None and "video" in dataset.kinds and dataset.has_reference:
        args.metric_names = (*args.metric_names, *VIDEO_METRICS)
    settings = _settings(args)
    seed = _resume_seed(args, settings)
    dataset = dataclasses.replace(dataset, degradation=dataclasses.replace(degradation, seed=seed)
                                  if dataset.degradation else None)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / _RUN_FILE).write_text(json.dumps({"settings": settings, "seed": seed}, indent=1))
    for line in dataset.skipped:
        print(line, file=sys.stderr)
    print(f"{dataset.name}: {len(dataset.items)} item(s), {dataset.layout.replace('_', ' ')}, x{args.scale}, "
          f"seed {seed}", file=sys.stderr)

    metric_device = "cpu"
    if any(name in LIBRARY_METRICS for name in args.metric_names):  # their networks run where the model does
        from seedvr_local.devices import resolve_device

        metric_device = str(resolve_device(args.device))
    metrics, skipped = build_metrics(args.metric_names, dataset, metric_device, args.metric_weights)
    for metric in skipped:
        print(metric.line(), file=sys.stderr)
    timeout = args.compare_timeout or DEFAULT_COMPARE_TIMEOUT_S
    specs = [] if args.no_model else [MethodSpec(MODEL_METHOD, lambda: load_model(args, seed))]
    specs += [MethodSpec(name, lambda name=name: ResizeMethod(name)) for name in args.baseline_names]
    specs += [MethodSpec(name, lambda name=name, command=command: CommandMethod(name, command, timeout))
              for name, command in args.compare_pairs]
    progress = ProgressBar(len(dataset.items) * len(specs))
    failures = run(dataset, specs, metrics, args.out, progress)

    run_info = {"seed": seed, "scale": args.scale, "settings": settings}
    built = report.build(args.out, dataset, [s.name for s in specs], list(args.metric_names), run_info, failures,
                         {metric.name: metric.reason for metric in skipped})
    report.write_all(built, args.out, dataset)
    print(f"report: {args.out / 'report.md'} and {args.out / 'report.html'}", file=sys.stderr)
    failed = sum(len(items) for items in failures.values())
    if failed:
        raise ValueError(f"{failed} item(s) failed (see the report); rerun the same command to retry them")
    return 0
