"""Download size, disk and GPU memory per model and weights format, from the shipped manifests and the memory
planner: the tables of docs/weights.md.

    python -m benchmarks.weights_table

Download sizes are the manifests' parameter counts times each format's bytes per parameter (a file adds a header
of a few hundred kB). GPU memory is the weights in the compute dtype (what the full-precision files take; the
compact formats' weights are in docs/low-vram.md) plus the memory planner's predicted peak above the weights for
one image, untiled and with its most frugal VAE tiling. It builds the full-size models on the `meta` device:
no download, no GPU, a few seconds on a CPU.
"""

from __future__ import annotations

import argparse

import torch

from seedvr_local.memory_cost import PhaseCosts
from seedvr_local.models.nadit import DiTConfig, NaDiT
from seedvr_local.models.vae import VAEConfig, VideoAutoencoder
from seedvr_local.models.vae_tiling import STORE_SCALES, VAETiling
from seedvr_local.pipeline import RestorationPipeline
from seedvr_local.weights.download import published_variants, remote_files
from seedvr_local.weights.formats import estimated_weight_bytes
from seedvr_local.weights.manifest import DIT_MANIFESTS, VAE_MANIFEST, load_manifest

GB = 1000**3
GiB = 1024**3
#: The precomputed text embeddings, bf16 [58, 5120] and [64, 5120] (spec: the official pos_emb.pt/neg_emb.pt).
EMBEDDING_BYTES = (58 + 64) * 5120 * 2
#: The 7B fp8 conversion keeps its last block in fp16 (`..._fp8_e4m3fn_mixed_block35_fp16`).
MIXED_FP16_PREFIX = "blocks.35."
OUTPUTS = ((1280, 720), (1920, 1080), (2560, 1440), (3840, 2160))
FRUGAL_TILE = 128  # the smallest tile `--vae-tile auto` tries (memory_planner.AUTO_TILES)


def file_bytes(filename: str) -> int:
    """Bytes of a weights file of `remote_files`, from its manifest and the precision its name says."""
    if filename.endswith(".pt"):
        return EMBEDDING_BYTES // 2  # each embedding file: about half of the two
    manifest = load_manifest(VAE_MANIFEST if filename.startswith("ema_vae") else _dit_manifest(filename))
    if filename.endswith(".gguf"):  # GGUF: the DiT's matrices in the file's block type, the small tensors F16
        return estimated_weight_bytes(manifest.shapes, filename.removesuffix(".gguf").rpartition("-")[2], torch.float16)
    if "_fp8_" in filename:
        mixed = "_mixed_block35_fp16" in filename
        return sum(
            _numel(shape) * (2 if mixed and key.startswith(MIXED_FP16_PREFIX) else 1)
            for key, shape in manifest.shapes.items()
        )
    return manifest.num_params * (2 if "_fp16" in filename else 4)


def _dit_manifest(filename: str) -> str:
    return next(name for model, name in DIT_MANIFESTS.items() if filename.startswith(f"seedvr2_ema_{model}"))


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def download_rows() -> list[tuple[str, str, str, float]]:
    rows = []
    for model in DIT_MANIFESTS:
        for variant in published_variants(model):
            files = remote_files(model, variant)
            names = ", ".join(f.filename for f in files if not f.filename.endswith(".pt"))
            rows.append((model, variant, names, sum(file_bytes(f.filename) for f in files) / GB))
    return rows


def planner_costs(model: str, dtype: torch.dtype) -> tuple[PhaseCosts, int]:
    """The planner's per-phase predictions for `model` in `dtype` on CUDA, and the weights' bytes in `dtype`."""
    config = DiTConfig.seedvr2_3b() if model == "3b" else DiTConfig.seedvr2_7b()
    with torch.device("meta"):
        dit = NaDiT.from_config(config).to(dtype)
        vae = VideoAutoencoder.from_vae_config(VAEConfig.seedvr2()).to(dtype)
    weights = sum(p.numel() for module in (dit, vae) for p in module.parameters()) * dtype.itemsize
    return PhaseCosts(RestorationPipeline(dit, vae, torch.empty(0)), "cuda"), weights


def memory_rows(dtype: torch.dtype) -> list[tuple[str, str, float, float, float]]:
    rows = []
    for model in DIT_MANIFESTS:
        costs, weights = planner_costs(model, dtype)
        for width, height in OUTPUTS:
            untiled = max(costs.estimate(width, height).values())
            tilings = [VAETiling(FRUGAL_TILE, scale) for scale in STORE_SCALES]
            frugal = min(max(costs.estimate(width, height, 1, tiling).values()) for tiling in tilings)
            peaks = ((weights + untiled) / GiB, (weights + frugal) / GiB)
            rows.append((model, f"{width}x{height}", weights / GiB, *peaks))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.weights_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                        help="compute dtype (default bf16)")
    args = parser.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]

    print("Download and disk (GB = 10^9 bytes), `seedvr-local download --model M --variant V`:\n")
    print("| model | variant | DiT and VAE files (+ pos_emb.pt, neg_emb.pt) | download and disk |")
    print("| --- | --- | --- | --- |")
    for model, variant, names, size in download_rows():
        print(f"| {model} | {variant} | {names} | {size:.1f} GB |")
    print(f"\nGPU memory, {args.dtype}, one image (GiB), as the memory planner predicts it for CUDA:\n")
    print("| model | output | weights | peak, untiled VAE | peak, most frugal VAE tiling |")
    print("| --- | --- | --- | --- | --- |")
    for model, output, weights, untiled, frugal in memory_rows(dtype):
        print(f"| {model} | {output} | {weights:.1f} | {untiled:.1f} | {frugal:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
