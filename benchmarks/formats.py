"""What each weight format costs: the restore's difference from float32 weights (PSNR, largest uint8 difference)
and the memory of loading it on the CPU (peak process RSS, and the DiT's resident weight bytes).

    python -m benchmarks.formats                          # 3B width, 1 DiT layer, full-size VAE, 128x128 output
    python -m benchmarks.formats --dit-layers 2 --output 192x128 --formats fp16,fp8_scaled,Q8_0,Q4_K
    python -m benchmarks.formats --model tiny             # the built-in tiny model: a smoke run in seconds

The "mid" model is the official 3B DiT at full width cut to `--dit-layers` layers, and the full-size VAE, with
random weights (std 0.02, norms 1) from a fixed seed: no download. Only the DiT is converted (the published files
pair every DiT with the fp16 VAE; the VAE stays float32 here, so the numbers are the DiT's cost alone). The same
input image, seed and float32 compute are used for every format, so the differences are the weights' alone.
Random weights spread quantisation error like trained ones do but their output is not a picture: read the PSNR as
a relative measure between formats, not as the quality of a real restore. The K types are quantised by
`benchmarks.gguf_files`'s plain min/max quantisers (published files use llama.cpp's, somewhat better).

Each load is measured in a fresh process (a process keeps freed memory, which would hide later peaks).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
FORMATS = ("fp32", "fp16", "bf16", "fp8", "fp8_scaled", "int8", "Q8_0", "Q6_K", "Q5_1", "Q4_K", "Q4_0")
DEFAULT_FORMATS = ",".join(FORMATS)


def build_state_dicts(model: str, dit_layers: int) -> tuple[dict, dict, dict, torch.Tensor]:
    """(DiT state_dict, VAE state_dict, config.json, text embedding), float32 on the CPU."""
    from benchmarks.models import TEXT_TOKENS, materialize_random_
    from seedvr_local.models.nadit import DiTConfig, NaDiT
    from seedvr_local.models.vae import VAEConfig, VideoAutoencoder
    from seedvr_local.weights.bundle import parameters_on_meta
    from seedvr_local.weights.tiny import build_tiny_models, tiny_dit_config, tiny_vae_config

    if model == "tiny":
        models = build_tiny_models()
        dit, vae, text = models.dit, models.vae, models.pos_emb
        dit_config, vae_config = tiny_dit_config(), tiny_vae_config()
    else:
        official = DiTConfig.seedvr2_3b().to_dict()
        per_layer = {k: v[:dit_layers] for k, v in official.items() if isinstance(v, list) and len(v) == 32}
        dit_config = DiTConfig.from_dict({**official, **per_layer, "num_layers": dit_layers}, "3b")
        vae_config = VAEConfig.seedvr2()
        generator = torch.Generator().manual_seed(0)
        with parameters_on_meta():
            dit, vae = NaDiT.from_config(dit_config), VideoAutoencoder.from_vae_config(vae_config)
        for module in (dit, vae):
            materialize_random_(module, generator)
        text = torch.randn(TEXT_TOKENS, dit_config.txt_in_dim, generator=generator)
    config = {"dit_variant": "3b", "dit": dit_config.to_dict(), "vae": vae_config.to_dict()}
    dit_sd = {k: v for k, v in dit.state_dict().items() if not k.endswith("rope.rope.freqs")}
    return dit_sd, dict(vae.state_dict()), config, text


def write_dit(directory: Path, dit: dict[str, torch.Tensor], fmt: str) -> str:
    """The DiT in `fmt` in `directory`; returns its file name."""
    from safetensors.torch import save_file

    from benchmarks.gguf_files import quantize_blocks, write_gguf

    if fmt.startswith("Q"):
        name = f"dit-{fmt}.gguf"
        write_gguf(directory / name, dit, lambda key, shape: fmt, quantize_blocks)
        return name
    stored = {}
    for key, value in dit.items():
        layer = key.removesuffix(".weight")
        matrix = key.endswith(".weight") and value.dim() >= 2
        if fmt in ("fp16", "bf16"):
            stored[key] = value.to(torch.float16 if fmt == "fp16" else torch.bfloat16)
        elif matrix and fmt == "fp8":  # numz's conversion: a plain cast
            stored[key] = value.to(torch.float8_e4m3fn)
        elif matrix and fmt == "fp8_scaled":  # ComfyUI's: one scale per tensor, the largest value at fp8's max
            scale = (value.abs().max() / 448).float()
            stored[key], stored[layer + ".weight_scale"] = (value / scale).to(torch.float8_e4m3fn), scale
            stored[layer + ".comfy_quant"] = torch.tensor(list(b'{"format": "float8_e4m3fn"}'), dtype=torch.uint8)
        elif matrix and fmt == "int8":  # ComfyUI's int8_tensorwise
            scale = (value.abs().max() / 127).float()
            stored[key] = (value / scale).round().clamp(-127, 127).to(torch.int8)
            stored[layer + ".weight_scale"] = scale
            stored[layer + ".comfy_quant"] = torch.tensor(list(b'{"format": "int8_tensorwise"}'), dtype=torch.uint8)
        else:
            stored[key] = value
    name = f"dit-{fmt}.safetensors"
    save_file({k: v.contiguous() for k, v in stored.items()}, directory / name)
    return name


def make_weights_dir(root: Path, fmt: str, dit, vae_name: str, config: dict) -> Path:
    directory = root / fmt
    directory.mkdir()
    dit_name = write_dit(directory, dit, fmt)
    for shared in (vae_name, "pos_emb.pt"):
        (directory / shared).symlink_to(root / shared)
    (directory / "config.json").write_text(json.dumps({**config, "files": {"dit": dit_name, "vae": vae_name}}))
    return directory


def measure_load(weights_dir: Path, output: tuple[int, int]) -> dict:
    """In a fresh process: load (peak RSS, resident DiT weight bytes), then restore one image."""
    code = "import sys; from benchmarks.formats import child; child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))"
    proc = subprocess.run([sys.executable, "-c", code, str(weights_dir), *map(str, output)], cwd=REPO,
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(weights_dir: str, width: int, height: int) -> None:
    from PIL import Image

    from benchmarks.measure import rss_bytes
    from seedvr_local.models.quantized import weight_bytes
    from seedvr_local.upscaler import Upscaler, UpscaleOptions

    before = rss_bytes()
    upscaler = Upscaler.from_weights_dir(weights_dir, device="cpu", dtype="fp32")
    loaded = rss_bytes()
    load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height // 2, width // 2, 3), dtype=np.uint8))
    result = upscaler.upscale(image, UpscaleOptions(seed=1, upscale_factor=2))
    out = Path(weights_dir) / "restored.npy"
    np.save(out, np.asarray(result.image))
    report = {
        "dit_weight_bytes": weight_bytes(upscaler.pipeline.dit),
        "rss_before": before,
        "rss_loaded": loaded,
        "load_peak_rss": load_peak,
        "restored": str(out),
    }
    print(json.dumps(report))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("mid", "tiny"), default="mid")
    parser.add_argument("--dit-layers", type=int, default=1, help="mid: the 3B DiT cut to this many layers")
    parser.add_argument("--output", default="128x128", help="output size WxH (the input is half of it)")
    parser.add_argument("--formats", default=DEFAULT_FORMATS, help=f"comma-separated, of {DEFAULT_FORMATS}")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        parser.error(f"unknown formats: {', '.join(unknown)}")
    formats = ["fp32"] + [f for f in formats if f != "fp32"]
    width, _, height = args.output.partition("x")
    output = (int(width), int(height or width))

    from safetensors.torch import save_file

    dit, vae, config, text = build_state_dicts(args.model, args.dit_layers)
    rows = []
    with tempfile.TemporaryDirectory(prefix="seedvr-formats-") as tmp:
        root = Path(tmp)
        save_file({k: v.contiguous() for k, v in vae.items()}, root / "vae.safetensors")
        torch.save(text, root / "pos_emb.pt")
        del vae
        reference = None
        for fmt in formats:
            measured = measure_load(make_weights_dir(root, fmt, dit, "vae.safetensors", config), output)
            restored = np.load(measured.pop("restored"))
            reference = restored if reference is None else reference
            diff = np.abs(restored.astype(int) - reference.astype(int))
            rows.append({"format": fmt, "psnr_db": psnr(restored, reference), "max_uint8_diff": int(diff.max()),
                         **measured})  # fmt: skip
            print(_row(rows[-1], rows[0]), flush=True)
    report = {
        "model": args.model,
        "dit_layers": args.dit_layers if args.model == "mid" else None,
        "output": args.output,
        "dit_params": sum(v.numel() for v in dit.values()),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "torch": torch.__version__,
        "results": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def _row(row: dict, fp32: dict) -> str:
    mib = 1 << 20
    weights, share = row["dit_weight_bytes"] / mib, row["dit_weight_bytes"] / fp32["dit_weight_bytes"]
    return (f"{row['format']:>10}  PSNR {row['psnr_db']:7.2f} dB  max diff {row['max_uint8_diff']:3d}  DiT weights "
            f"{weights:8.1f} MiB ({share:.2f} of fp32)  load peak RSS {row['load_peak_rss'] / mib:7.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
