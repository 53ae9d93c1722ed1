"""Compact weights: the GGML dequantisers against llama.cpp's gguf-py, the Triton kernels against them (CPU
interpreter), GGUF and 8-bit (fp8, ComfyUI scaled fp8, int8) weights directories restoring what the same
weights in float32 restore, through the Python API and the CLI, with the weights kept packed in memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf.quants import dequantize
from PIL import Image

from seedvr_local.cli import main
from seedvr_local.kernels import backend, ggml_reference
from seedvr_local.models.quantized import QuantizedTensor, dequant_scratch_bytes, quantized_kinds, weight_bytes
from seedvr_local.upscaler import Upscaler, UpscaleOptions
from seedvr_local.weights.bundle import load_models
from seedvr_local.weights.checkpoint import CheckpointFormatError, read_shapes
from seedvr_local.weights.formats import estimated_weight_bytes
from seedvr_local.weights.manifest import CheckpointMismatchError, load_manifest
from tests import requires
from tests.compact_weights import (
    K_TYPES,
    QUANTIZER_TYPES,
    tiny_state_dicts,
    write_gguf,
    write_weights_dir,
)

REPO = Path(__file__).resolve().parents[1]
ALL_TYPES = QUANTIZER_TYPES + K_TYPES


def _assert_bit_exact(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal bits, except that any NaN equals any NaN (their sign and payload differ between numpy and torch:
    random scale bytes include inf, and inf * 0 is a NaN either way)."""
    assert got.dtype == want.dtype == torch.float32 and got.shape == want.shape
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32))


# ------------------------------------------------------------------------------------------ dequantisers


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_reference_dequantiser_is_bit_exact_with_gguf_py(type_name):
    qtype = gguf.GGMLQuantizationType[type_name]
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    assert ggml_reference.BLOCK_LAYOUTS[type_name] == (block_size, type_size)
    rng = np.random.default_rng(7)
    # Every byte pattern: scales included (some decode to inf/NaN, compared by their bits too).
    raw = rng.integers(0, 256, (300, type_size), dtype=np.uint8)
    want = dequantize(raw, qtype).reshape(300, block_size)
    got = ggml_reference.dequantize_blocks(torch.from_numpy(raw), type_name)
    _assert_bit_exact(got, torch.from_numpy(want))


@pytest.mark.parametrize("type_name", QUANTIZER_TYPES)
def test_reference_dequantises_gguf_py_quantised_weights(type_name):
    from gguf.quants import quantize

    qtype = gguf.GGMLQuantizationType[type_name]
    values = np.random.default_rng(1).normal(0, 0.05, (8, 64)).astype(np.float32)
    blocks = quantize(values, qtype)
    got = ggml_reference.dequantize_blocks(torch.from_numpy(blocks.reshape(-1, blocks.shape[-1] // 2)), type_name)
    _assert_bit_exact(got.reshape(8, 64), torch.from_numpy(dequantize(blocks, qtype)))
    assert float((got.reshape(8, 64) - torch.from_numpy(values)).abs().max()) < 0.02  # and it is the weight


def run_interpreter_dequant(out_path: str) -> None:
    """Subprocess entry (TRITON_INTERPRET=1): the Triton dequant kernels, through the op, on fixed blocks."""
    from seedvr_local import kernels
    from seedvr_local.kernels import dequant, triton_dequant

    assert backend.interpreter_enabled()
    launched = []
    real = triton_dequant.dequantize_blocks
    triton_dequant.dequantize_blocks = lambda *a: launched.append(a[1]) or real(*a)
    results = {}
    for type_name in dequant.TRITON_TYPES:
        with kernels.use("triton"):
            results[type_name] = dequant.dequantize_ggml(_kernel_case(type_name), type_name, torch.float32)
    results["launched"] = launched
    results["kernel_types"] = triton_dequant.KERNEL_TYPES
    torch.save(results, out_path)


def _kernel_case(type_name: str) -> torch.Tensor:
    _, type_size = ggml_reference.BLOCK_LAYOUTS[type_name]
    # 11 blocks: one full program of triton_dequant.BLOCKS and a partial one (masked).
    raw = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (11, type_size), dtype=np.uint8))
    raw[:, 0:2] = torch.tensor([0x66, 0x1E], dtype=torch.uint8)  # a finite scale: 0.0061
    return raw


def test_triton_dequant_kernels_match_the_reference_bit_for_bit(tmp_path):
    if not backend.triton_available():
        requires.missing("triton", "optional dependency: pip install 'seedvr-local[triton]'")
    out = tmp_path / "dequant.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    code = "import sys; from tests.test_compact_weights import run_interpreter_dequant as r; r(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = torch.load(out)
    assert results["launched"] == ["Q8_0", "Q4_K"] and results["kernel_types"] == ("Q8_0", "Q4_K")
    for type_name in ("Q8_0", "Q4_K"):
        want = ggml_reference.dequantize_blocks(_kernel_case(type_name), type_name)
        _assert_bit_exact(results[type_name], want)


# ------------------------------------------------------------------------------------------ weights dirs


@pytest.fixture(scope="module")
def tiny_weights():
    return tiny_state_dicts()


def _gguf_dir(root: Path, tiny_weights, types: list[str], *, vae_types: list[str] | None = None) -> tuple[Path, Path]:
    """A weights dir with the DiT (and the VAE when `vae_types`) as GGUF, and its float32 oracle dir."""
    dit, vae, pos_emb = tiny_weights
    quant, oracle = root / "gguf", root / "float32"
    quant.mkdir(parents=True)
    dit_oracle, _ = write_gguf(quant / "seedvr2_ema_3b-test.gguf", dit, types)
    vae_file, vae_oracle = "ema_vae.safetensors", vae
    if vae_types:
        vae_file = "ema_vae-test.gguf"
        vae_oracle, _ = write_gguf(quant / vae_file, vae, vae_types, seed=1, prefix="")
    write_weights_dir(quant, "seedvr2_ema_3b-test.gguf", vae_file, pos_emb, vae=None if vae_types else vae)
    write_weights_dir(oracle, "dit.safetensors", "vae.safetensors", pos_emb, dit_oracle, vae_oracle)
    return quant, oracle


def _image(width=24, height=16) -> Image.Image:
    return Image.fromarray(np.random.default_rng(5).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _restore(weights_dir: Path) -> np.ndarray:
    upscaler = Upscaler.from_weights_dir(weights_dir, device="cpu")
    return np.asarray(upscaler.upscale(_image(), UpscaleOptions(seed=4)).image).astype(np.int16)


def _assert_within_one_level(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert int(np.abs(got - want).max()) <= 1
    assert want.std() > 5  # a real picture, not a constant one that any weights would give


@pytest.mark.parametrize(
    "types, vae_types",
    [
        (["Q8_0", "Q4_0"], None),
        pytest.param(["Q4_1", "Q5_0", "Q5_1"], ["Q8_0"], marks=pytest.mark.slow),
        (list(K_TYPES), ["Q4_0"]),
    ],
    ids=["q8_q4", "q4_1_q5-vae_q8", "k_quants-vae_q4"],
)
def test_a_gguf_weights_dir_restores_what_its_float32_weights_restore(tmp_path, tiny_weights, types, vae_types):
    quant, oracle = _gguf_dir(tmp_path, tiny_weights, types, vae_types=vae_types)
    _assert_within_one_level(_restore(quant), _restore(oracle))


def test_the_gguf_dit_stays_packed_in_memory(tmp_path, tiny_weights):
    quant, _ = _gguf_dir(tmp_path, tiny_weights, ["Q4_K", "Q8_0", "Q6_K"])
    models = load_models(quant)
    reader = gguf.GGUFReader(quant / "seedvr2_ema_3b-test.gguf")
    stored = {t.name.removeprefix("model.diffusion_model."): t for t in reader.tensors}
    quantized = {k: t for k, t in stored.items() if t.tensor_type.name in ("Q4_K", "Q8_0", "Q6_K")}
    assert len(quantized) >= 10
    params = dict(models.dit.named_parameters())
    for key, tensor in quantized.items():
        param = params[key]
        assert isinstance(param, QuantizedTensor) and param.kind == tensor.tensor_type.name
        assert param.qdata.dtype == torch.uint8 and param.qdata.nbytes == tensor.n_bytes
        assert param.dtype == torch.float32 and tuple(param.shape) == tuple(reversed(tensor.shape.tolist())) or (
            param.numel() == tensor.n_elements  # stored reshaped: logical shape from comfy.gguf.orig_shape
        )
    # The DiT's parameters take the file's packed bytes, and float32 for the plain tensors (loaded in float32).
    expected = sum(t.n_bytes if k in quantized else t.n_elements * 4 for k, t in stored.items())
    resident = sum(p.storage_bytes if isinstance(p, QuantizedTensor) else p.nbytes for p in models.dit.parameters())
    assert resident == expected
    assert weight_bytes(models.dit) < 0.5 * sum(p.numel() * 4 for p in models.dit.parameters())
    assert quantized_kinds(models.dit) == {
        name: sum(t.tensor_type.name == name for t in quantized.values()) for name in ("Q4_K", "Q8_0", "Q6_K")
    }
    # Dequantising the largest packed weight: its float32 values and their float32 copy (loaded in float32).
    assert dequant_scratch_bytes(models.dit) == max(t.n_elements for t in quantized.values()) * (4 + 4)


def test_the_predicted_weight_bytes_are_what_loading_takes(tmp_path, tiny_weights):
    # Every tiny weight matrix has a multiple of 32 values, so a Q8_0 file packs all of them.
    quant, _ = _gguf_dir(tmp_path, tiny_weights, ["Q8_0"])
    models = load_models(quant)
    shapes = {key: tuple(p.shape) for key, p in models.dit.named_parameters()}
    assert all(isinstance(p, QuantizedTensor) for p in models.dit.parameters() if p.dim() >= 2)
    params = sum(p.storage_bytes if isinstance(p, QuantizedTensor) else p.nbytes for p in models.dit.parameters())
    assert estimated_weight_bytes(shapes, "Q8_0", torch.float32) == params


@pytest.mark.parametrize(
    "manifest, weights_format, published_bytes",
    [("3b", "Q4_K_M", 1.91e9), ("7b", "Q4_K_M", 4.64e9), ("3b", "fp8", 3.39e9), ("7b", "fp8", 8.24e9)],
)
def test_the_predicted_weight_bytes_match_the_published_files(manifest, weights_format, published_bytes):
    """The published files' sizes (huggingface.co/carzy99921/SeedVR2-models lists them to 3 digits) are their
    weights: the prediction for a load in fp16 (small tensors at 2 bytes, as those files store them) agrees."""
    predicted = estimated_weight_bytes(load_manifest(manifest).shapes, weights_format, torch.float16)
    assert abs(predicted - published_bytes) / published_bytes < 0.005


def test_the_cli_restores_from_a_gguf_weights_dir(tmp_path, tiny_weights):
    quant, oracle = _gguf_dir(tmp_path, tiny_weights, ["Q8_0", "Q4_K"], vae_types=["Q8_0"])
    source = tmp_path / "in.png"
    _image().save(source)
    outputs = []
    for weights in (quant, oracle):
        target = tmp_path / f"{weights.name}.png"
        assert main(["upscale", str(source), "-o", str(target), "--weights-dir", str(weights), "--seed", "4"]) == 0
        outputs.append(np.asarray(Image.open(target)).astype(np.int16))
    _assert_within_one_level(*outputs)


def test_gguf_keys_and_shapes_are_validated_against_the_manifest(tmp_path):
    """An official-name GGUF DiT is checked against the shipped 3B manifest before any tensor data is read: the
    file here has the real 3B tensor table over a sparse (unwritten) data section."""
    manifest = load_manifest("3b")
    keys = list(manifest.shapes)
    missing, misshapen = keys[5], keys[0]
    weights = tmp_path / "w"
    weights.mkdir()
    path = weights / "seedvr2_ema_3b-Q8_0.gguf"
    writer = gguf.GGUFWriter(path, arch="seedvr2")
    for key in keys + ["unexpected.weight"]:
        if key == missing:
            continue
        shape = (2, 3) if key == misshapen else manifest.shapes.get(key, (4,))
        numpy_shape = shape or (1,)  # the writer stores the dims reversed, as GGUF does
        nbytes = 2 * int(np.prod(shape))
        writer.add_tensor_info("model.diffusion_model." + key, numpy_shape, np.dtype(np.float16), nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    data_bytes = sum(info.nbytes + 32 for info in writer.tensors[0].values())
    writer.close()
    with open(path, "r+b") as stream:  # the data the table promises, as a hole: no disk, no memory
        stream.seek(0, 2)
        stream.truncate(stream.tell() + 32 + data_bytes)
    (weights / "ema_vae.safetensors").write_bytes(b"")
    torch.save(torch.zeros(2, 5120), weights / "pos_emb.pt")
    with pytest.raises(CheckpointMismatchError) as info:
        load_models(weights)
    message = str(info.value)
    assert "seedvr2_ema_3b-Q8_0.gguf" in message and "\n" not in message
    for name in (missing, misshapen, "unexpected.weight"):
        assert name in message, message
    assert "[2, 3] instead of" in message


def test_a_lying_orig_shape_is_one_clear_error(tmp_path, tiny_weights):
    path = tmp_path / "seedvr2_ema_3b-Q8_0.gguf"
    writer = gguf.GGUFWriter(path, arch="seedvr2")
    writer.add_tensor("model.diffusion_model.txt_in.weight", np.zeros((40, 32), dtype=np.float16))
    writer.add_array("comfy.gguf.orig_shape.model.diffusion_model.txt_in.weight", [40, 33])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointFormatError, match=r"orig_shape\.model\.diffusion_model\.txt_in\.weight \[40, 33\]"):
        read_shapes(path)
    ternary = tmp_path / "ternary.gguf"
    writer = gguf.GGUFWriter(ternary, arch="seedvr2")
    _, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.TQ2_0]
    ternary_blocks = np.zeros((40, type_size), dtype=np.uint8)
    writer.add_tensor("txt_in.weight", ternary_blocks, raw_dtype=gguf.GGMLQuantizationType.TQ2_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointFormatError, match="tensor txt_in.weight is stored as TQ2_0, which is not supported"):
        read_shapes(ternary)
    (tmp_path / "other.gguf").write_bytes(b"GGUF not really")
    with pytest.raises(CheckpointFormatError, match="other.gguf: not a readable GGUF file"):
        read_shapes(tmp_path / "other.gguf")


# ------------------------------------------------------------------------------------------ 8-bit files


def _fp8_scaled(weight: torch.Tensor, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    amax = weight.abs().amax(dim=1, keepdim=True) if per_row else weight.abs().max()
    scale = (amax / 448).float().clamp_min(1e-12)
    return (weight / scale).to(torch.float8_e4m3fn), scale.reshape(-1) if per_row else scale.reshape(())


def _int8_scaled(weight: torch.Tensor, block: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    if block is None:
        scale = (weight.abs().max() / 127).float()
        return (weight / scale).round().clamp(-127, 127).to(torch.int8), scale
    rows, cols = block
    blocks = weight.reshape(weight.shape[0] // rows, rows, weight.shape[1] // cols, cols)
    scale = (blocks.abs().amax(dim=(1, 3)) / 127).float().clamp_min(1e-12)
    q = (blocks / scale[:, None, :, None]).round().clamp(-127, 127).to(torch.int8).reshape(weight.shape)
    return q, scale


def _eight_bit_files(dit: dict[str, torch.Tensor], layout: str) -> tuple[dict, dict]:
    """(the file's tensors, the oracle state_dict: the same weights as float32 by the layout's formula)."""
    stored, oracle = {}, {}
    for key, weight in dit.items():
        eligible = key.endswith(".weight") and weight.dim() == 2
        if not eligible:
            stored[key] = oracle[key] = weight
            continue
        layer = key.removesuffix(".weight")
        if layout == "fp8":  # numz's conversion: fp8 values, no scale
            stored[key] = weight.to(torch.float8_e4m3fn)
            oracle[key] = stored[key].float()
        elif layout in ("comfy_fp8", "legacy_fp8"):
            q, scale = _fp8_scaled(weight, per_row=layout == "legacy_fp8")
            stored[key] = q
            stored[layer + (".weight_scale" if layout == "comfy_fp8" else ".scale_weight")] = scale
            if layout == "comfy_fp8":
                stored[layer + ".comfy_quant"] = _format_record("float8_e4m3fn")
                stored[layer + ".input_scale"] = torch.tensor(1.0)
            oracle[key] = q.float() * (scale[:, None] if scale.dim() else scale)
        else:  # int8_tensorwise / int8_blockwise
            whole_blocks = weight.shape[0] % 8 == 0 and weight.shape[1] % 8 == 0
            block = (8, 8) if layout == "int8_blockwise" and whole_blocks else None
            q, scale = _int8_scaled(weight, block)
            stored[key], stored[layer + ".weight_scale"] = q, scale
            stored[layer + ".comfy_quant"] = _format_record("int8_blockwise" if block else "int8_tensorwise")
            expand = scale.repeat_interleave(8, 0).repeat_interleave(8, 1) if block else scale
            oracle[key] = q.float() * expand
    if layout == "legacy_fp8":  # as ComfyUI writes them: the model's keys prefixed, the marker not
        stored = {"model.diffusion_model." + key: value for key, value in stored.items()}
        stored["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    return stored, oracle


def _format_record(fmt: str) -> torch.Tensor:
    return torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param("fp8", marks=pytest.mark.slow),  # the plain cast: covered by the scaled ones' code path
        "comfy_fp8",
        pytest.param("legacy_fp8", marks=pytest.mark.slow),
        pytest.param("int8_tensorwise", marks=pytest.mark.slow),
        "int8_blockwise",
    ],
)
def test_an_8bit_dit_restores_what_its_float32_weights_restore_and_stays_8bit(tmp_path, tiny_weights, layout):
    dit, vae, pos_emb = tiny_weights
    stored, oracle = _eight_bit_files(dit, layout)
    packed_dir = write_weights_dir(tmp_path / "packed", "dit.safetensors", "vae.safetensors", pos_emb, stored, vae)
    oracle_dir = write_weights_dir(tmp_path / "float32", "dit.safetensors", "vae.safetensors", pos_emb, oracle, vae)
    _assert_within_one_level(_restore(packed_dir), _restore(oracle_dir))
    models = load_models(packed_dir)
    packed = [p for p in models.dit.parameters() if isinstance(p, QuantizedTensor)]
    eight_bit = [k for k, v in stored.items() if v.dtype in (torch.float8_e4m3fn, torch.int8) and v.dim() == 2]
    assert len(packed) == len(eight_bit) >= 20
    assert all(p.qdata.element_size() == 1 and p.qdata.shape == p.shape for p in packed)


def test_unsupported_comfy_formats_are_refused_by_layer_name(tmp_path, tiny_weights):
    dit, vae, pos_emb = tiny_weights
    stored, _ = _eight_bit_files(dit, "comfy_fp8")
    stored["blocks.1.mlp.all.proj_in.comfy_quant"] = _format_record("nvfp4")
    weights = write_weights_dir(tmp_path / "w", "dit.safetensors", "vae.safetensors", pos_emb, stored, vae)
    with pytest.raises(CheckpointFormatError, match="layer blocks.1.mlp.all.proj_in is stored as nvfp4"):
        load_models(weights)


@pytest.mark.slow
def test_formats_benchmark_smoke(tmp_path, capsys):
    from benchmarks import formats

    out = tmp_path / "formats.json"
    assert formats.main(["--model", "tiny", "--formats", "Q8_0,int8", "--output", "32x32", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {row["format"]: row for row in report["results"]}
    assert list(rows) == ["fp32", "Q8_0", "int8"]
    assert rows["fp32"]["max_uint8_diff"] == 0 and rows["Q8_0"]["psnr_db"] > 30
    assert rows["Q8_0"]["dit_weight_bytes"] < 0.5 * rows["fp32"]["dit_weight_bytes"]
    assert "Q8_0" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_dequant_on_cuda_matches_the_reference(dtype):
    """On a GPU (`benchmarks/device_check.sh`, step tests): compiled kernels, fp fusion off, same bits as the
    reference, rounded once to the compute dtype."""
    from seedvr_local import kernels
    from seedvr_local.kernels import dequant

    for type_name in dequant.TRITON_TYPES:
        raw = _kernel_case(type_name).repeat(1000, 1).cuda()
        with kernels.use("triton"):
            got = dequant.dequantize_ggml(raw, type_name, dtype)
        want = ggml_reference.dequantize_blocks(raw.cpu(), type_name).to(dtype)
        assert torch.equal(got.cpu().float().nan_to_num(), want.float().nan_to_num()), type_name
