"""Unit tests of the NaDiT beyond the reference cases: window layouts, batching, grouped attention, RoPE, dtypes,
configs. Parity with the official forward itself is in test_reference_parity.py (kinds dit3b / dit7b)."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seedvr_local.kernels.reference import rotate_pairs
from seedvr_local.models.nadit import DiTConfig, NaDiT
from seedvr_local.models.window_attention import TokenLayout, resolve_attention_backend
from seedvr_local.models.windows import window_boxes, window_size
from tests.parity.dit import build_case_model
from tests.precision import DIT_LIMITS, assert_within
from tests.reference_data import case_params, discover_cases, first_case

DIT_CASES = [c for c in discover_cases() if c.kind in ("dit3b", "dit7b")]
METHODS = {"regular_windows": "720pwin_by_size_bysize", "shifted_windows": "720pswin_by_size_bysize"}


def tiny_config(variant: str, **overrides) -> DiTConfig:
    common = dict(vid_dim=32, txt_in_dim=24, txt_dim=32, emb_dim=192, heads=2, head_dim=16, expand_ratio=2)
    if variant == "3b":
        cfg = dict(num_layers=3, mm_layers=1, mlp_type="swiglu", rope_dim=16, output_norm="fusedrms")
    else:
        cfg = dict(num_layers=2, mlp_type="normal", qk_rope=True)
    return DiTConfig.checked(variant=variant, **{**common, **cfg, **overrides})


def random_model(variant: str, seed: int = 0, **overrides) -> NaDiT:
    """A tiny model whose identity-initialised parameters (norm weights, ada offsets) are perturbed too."""
    torch.manual_seed(seed)
    model = NaDiT.from_config(tiny_config(variant, **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    return model


def random_inputs(grids, txt_lens, seed: int = 1, txt_dim: int = 24):
    g = torch.Generator().manual_seed(seed)
    vids = [torch.randn(33, *grid, generator=g) for grid in grids]
    txts = [torch.randn(n, txt_dim, generator=g) for n in txt_lens]
    return vids, txts


# ----------------------------------------------------------------------------------------------- windows


@pytest.mark.parametrize("case", case_params(DIT_CASES, "dit3b/dit7b reference case"))
def test_window_boxes_match_reference_notes(case):
    assert case.meta["notes"]["windows_per_sample"], "a DiT case without window notes"
    for sample in case.meta["notes"]["windows_per_sample"]:
        grid = tuple(sample["token_grid"])
        for key, method in METHODS.items():
            got = [[list(interval) for interval in box] for box in window_boxes(grid, (4, 3, 3), method)]
            assert got == sample[key], f"{key} for token grid {grid}"


@pytest.mark.parametrize(
    "grid, size, regular, shifted",
    [
        ((1, 24, 32), (1, 18, 23), 4, 4),
        ((1, 45, 80), (1, 15, 27), 9, 16),
        ((1, 67, 120), (1, 15, 27), 25, 25),
        ((21, 45, 80), (6, 15, 27), 36, 64),
        ((5, 24, 32), (2, 18, 23), 12, 12),
    ],
)
def test_window_counts_of_the_spec_table(grid, size, regular, shifted):
    assert window_size(grid, (4, 3, 3)) == size
    assert len(window_boxes(grid, (4, 3, 3), METHODS["regular_windows"])) == regular
    assert len(window_boxes(grid, (4, 3, 3), METHODS["shifted_windows"])) == shifted


def test_windows_tile_the_grid_exactly_once():
    for grid in [(1, 1, 150), (7, 13, 3), (3, 45, 80), (40, 9, 9)]:
        for method in METHODS.values():
            count = torch.zeros(grid, dtype=torch.int64)
            for (t0, t1), (h0, h1), (w0, w1) in window_boxes(grid, (4, 3, 3), method):
                count[t0:t1, h0:h1, w0:w1] += 1
            assert bool((count == 1).all()), (grid, method)


# ------------------------------------------------------------------------------ grouped window attention


def naive_window_attention(attn, vid, txt, grids, txt_lens):
    """One window at a time, explicit softmax: the definition the grouped implementation must equal."""
    heads, d = attn.heads, attn.head_dim
    vid_q, vid_k, vid_v = attn.proj_qkv.vid_branch(vid).unflatten(-1, (3, heads, d)).unbind(1)
    txt_q, txt_k, txt_v = attn.proj_qkv.txt_branch(txt).unflatten(-1, (3, heads, d)).unbind(1)
    vid_q, txt_q = attn.norm_q(vid_q, txt_q)
    vid_k, txt_k = attn.norm_k(vid_k, txt_k)
    rope = attn.rope
    vid_out, txt_out = torch.zeros_like(vid_v), torch.zeros_like(txt_v)
    vid_start = txt_start = 0
    for (t, h, w), n_txt in zip(grids, txt_lens):
        vid_rows = torch.arange(vid_start, vid_start + t * h * w).view(t, h, w)
        txt_rows = torch.arange(txt_start, txt_start + n_txt)
        tq, tk, tv = txt_q[txt_rows], txt_k[txt_rows], txt_v[txt_rows]
        if rope is not None and rope.rotates_text:
            cos, sin = rope.text_table(torch.arange(n_txt))
            tq, tk = rotate_pairs(tq, cos[:, None], sin[:, None]), rotate_pairs(tk, cos[:, None], sin[:, None])
        boxes = window_boxes((t, h, w), attn.window, attn.window_method)
        for (t0, t1), (h0, h1), (w0, w1) in boxes:
            rows = vid_rows[t0:t1, h0:h1, w0:w1].flatten()
            q, k = vid_q[rows], vid_k[rows]
            if rope is not None:
                cos, sin = rope.video_table((t1 - t0, h1 - h0, w1 - w0), n_txt, vid.device)
                q, k = rotate_pairs(q, cos[:, None], sin[:, None]), rotate_pairs(k, cos[:, None], sin[:, None])
            q, k, v = (torch.cat(pair).transpose(0, 1) for pair in ((q, tq), (k, tk), (vid_v[rows], tv)))
            out = ((q @ k.transpose(1, 2)) / math.sqrt(d)).softmax(-1) @ v
            out = out.transpose(0, 1)
            vid_out[rows] = out[: len(rows)]
            txt_out[txt_rows] += out[len(rows) :] / len(boxes)
        vid_start, txt_start = vid_start + t * h * w, txt_start + n_txt
    return attn.proj_out(vid_out.flatten(1), txt_out.flatten(1))


@pytest.mark.parametrize("variant", ["3b", "7b"])
@pytest.mark.parametrize("layer", [0, 1])  # regular, shifted
def test_grouped_window_attention_equals_naive_loop(variant, layer):
    model = random_model(variant)
    attn = model.blocks[layer].attn
    # Two same-size samples (their windows share groups), a partial-window video, a 150-token-wide strip.
    grids, txt_lens = [(1, 21, 25), (1, 21, 25), (5, 6, 8), (1, 1, 150)], [5, 7, 5, 3]
    g = torch.Generator().manual_seed(3)
    vid = torch.randn(sum(t * h * w for t, h, w in grids), 32, generator=g)
    txt = torch.randn(sum(txt_lens), 32, generator=g)
    with torch.no_grad():
        got = attn(vid, txt, TokenLayout(grids, txt_lens, vid.device, "sdpa"))
        want = naive_window_attention(attn, vid, txt, grids, txt_lens)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=0)


# ----------------------------------------------------------------------------------------- whole model


@pytest.mark.parametrize("variant", ["3b", "7b"])
def test_batch_equals_per_sample(variant):
    model = random_model(variant)
    latents = [(1, 42, 50), (3, 16, 20), (1, 42, 50), (1, 10, 14)]
    vids, txts = random_inputs(latents, [6, 9, 4, 6])
    timestep = torch.tensor([1000.0, 1000.0, 437.5, 1000.0])
    with torch.no_grad():
        batched = model.forward_samples(vids, txts, timestep)
        for i, out in enumerate(batched):
            (single,) = model.forward_samples([vids[i]], [txts[i]], timestep[i : i + 1])
            assert out.shape == (16, *latents[i])
            torch.testing.assert_close(out, single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["3b", "7b"])
def test_attention_backends_give_the_same_numbers(variant):
    model = random_model(variant)
    vids, txts = random_inputs([(1, 42, 50), (3, 16, 20)], [6, 9])
    outputs = {}
    with torch.no_grad():
        for backend in ("per_window", "sdpa", "auto"):
            model.set_window_attention_backend(backend)
            outputs[backend] = torch.cat([o.flatten() for o in model.forward_samples(vids, txts, 1000.0)])
    torch.testing.assert_close(outputs["sdpa"], outputs["per_window"], atol=1e-5, rtol=0)
    # On the CPU `auto` is `sdpa`: compared with the independent naive loop, not with itself.
    torch.testing.assert_close(outputs["auto"], outputs["per_window"], atol=1e-5, rtol=0)


def _reference_varlen(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k):
    """What a varlen flash kernel computes, written from its contract alone: one softmax attention per
    [cu[i], cu[i+1]) span of packed `(tokens, heads, d)` rows."""
    assert q.dim() == 3 and q.shape == k.shape == v.shape
    assert cu_seq_q.dtype == torch.int32 and torch.equal(cu_seq_q, cu_seq_k)
    bounds = cu_seq_q.tolist()
    assert bounds[0] == 0 and bounds[-1] == q.shape[0]
    assert max_q == max_k == max(b - a for a, b in zip(bounds, bounds[1:]))
    out = torch.empty_like(q)
    for a, b in zip(bounds, bounds[1:]):
        scores = torch.einsum("qhd,khd->hqk", q[a:b], k[a:b]) / math.sqrt(q.shape[-1])
        out[a:b] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[a:b])
    return out


@pytest.mark.parametrize("variant, overrides", [("3b", {}), ("7b", {}), ("7b", {"qk_rope": False})])
def test_packed_varlen_path_matches_the_grouped_one(variant, overrides, monkeypatch):
    """The packing that feeds the CUDA varlen kernels (one call per layer over every window of every sample),
    run here through a stand-in kernel: only the real kernel's arithmetic is left for the CUDA tests."""
    from seedvr_local.models import window_attention

    monkeypatch.setattr(window_attention, "_torch_varlen", lambda: _reference_varlen)
    monkeypatch.setattr(window_attention, "attention_backend_available", lambda *args: True)
    model = random_model(variant, **overrides)
    vids, txts = random_inputs([(1, 42, 50), (3, 16, 20), (1, 10, 14)], [6, 9, 6])
    outputs = {}
    with torch.no_grad():
        for backend in ("sdpa", "torch_varlen"):
            assert model.set_window_attention_backend(backend) == backend
            outputs[backend] = torch.cat([o.flatten() for o in model.forward_samples(vids, txts, 1000.0)])
    torch.testing.assert_close(outputs["torch_varlen"], outputs["sdpa"], atol=1e-5, rtol=0)


def test_attention_backend_choice():
    cpu = torch.device("cpu")
    assert resolve_attention_backend("auto", cpu, torch.float32, 16)[0] == "sdpa"  # no CUDA here
    with pytest.raises(ValueError, match="cannot run"):
        resolve_attention_backend("torch_varlen", cpu, torch.bfloat16, 16)
    model = random_model("7b")
    with pytest.raises(ValueError, match="unknown attention backend 'fast'; known: auto, flash_attn"):
        model.set_window_attention_backend("fast")
    with pytest.raises(ValueError, match="cannot run"):
        model.set_window_attention_backend("flash_attn")
    assert model.window_attention_backend == "sdpa"  # a refused choice changes nothing


def test_attention_backend_is_resolved_once_per_model(monkeypatch):
    """Chosen when set (and again only when the model moves), never per layer or per forward."""
    from seedvr_local.models import window_attention

    calls = []
    real = window_attention.attention_backend_available
    monkeypatch.setattr(window_attention, "attention_backend_available", lambda *a: calls.append(a) or real(*a))
    model = random_model("3b")
    assert model.set_window_attention_backend("auto") == "sdpa"
    resolved = len(calls)
    vids, txts = random_inputs([(1, 8, 10)], [3])
    with torch.no_grad():
        model.forward_samples(vids, txts, 1000.0)
        model.forward_samples(vids, txts, 1000.0)
    assert len(calls) == resolved
    model.to(torch.bfloat16)  # another dtype: resolved again, once
    with torch.no_grad():
        model.forward_samples([v.bfloat16() for v in vids], [t.bfloat16() for t in txts], 1000.0)
    assert calls[-1][2] == torch.bfloat16 and len(calls) == 2 * resolved


def test_two_models_keep_their_own_backends():
    per_window, grouped = random_model("7b"), random_model("7b")
    per_window.set_window_attention_backend("per_window")
    assert (per_window.window_attention_backend, grouped.window_attention_backend) == ("per_window", "sdpa")
    assert per_window.kernel_backend == grouped.kernel_backend == "torch"  # CPU models


@pytest.mark.parametrize("variant", ["3b", "7b"])
def test_extreme_aspect_ratio(variant):
    """A 150-token-wide window: beyond the official 128-position RoPE table (it crashes above ~41:1)."""
    grid = (1, 1, 150)
    assert max(w1 - w0 for _, _, (w0, w1) in window_boxes(grid, (4, 3, 3), METHODS["regular_windows"])) > 128
    model = random_model(variant)
    vids, txts = random_inputs([(1, 2, 300), (2, 300, 2)], [5, 5])
    with torch.no_grad():
        outs = model.forward_samples(vids, txts, 1000.0)
    assert [tuple(o.shape) for o in outs] == [(16, 1, 2, 300), (16, 2, 300, 2)]
    assert all(bool(o.isfinite().all()) for o in outs)


@pytest.mark.parametrize("variant", ["3b", "7b"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_smoke(variant, dtype):
    model = random_model(variant)
    vids, txts = random_inputs([(1, 16, 24), (2, 8, 10)], [5, 3])
    with torch.no_grad():
        reference = model.forward_samples(vids, txts, 1000.0)
        outs = model.to(dtype).forward_samples(vids, txts, 1000.0)
    for out, ref in zip(outs, reference):
        assert out.dtype == dtype and bool(out.isfinite().all())
        assert_within(out.float(), ref, DIT_LIMITS[dtype], f"{variant} {dtype}")


def _by_kind(kind: str):
    return first_case([c for c in DIT_CASES if c.kind == kind], f"{kind} reference case")


@pytest.mark.reference
@pytest.mark.parametrize("kind", ["dit3b", "dit7b"])
def test_rope_frequencies_are_recomputed_not_loaded(kind):
    case = _by_kind(kind)
    model = build_case_model(case)
    rope = model.blocks[0].attn.rope
    # The formula reproduces the official fp32 buffer bit for bit.
    assert torch.equal(rope.frequencies(), case.weights["blocks.0.attn.rope.rope.freqs"])
    vids, txts = case.indexed(case.inputs, "vid"), case.indexed(case.inputs, "txt")
    with torch.no_grad():
        clean = model.forward_samples(vids, txts, case.inputs["timestep"])
        for block in model.blocks:
            freqs = block.attn.rope.rope.freqs
            freqs.copy_(freqs.to(torch.float8_e4m3fn).float() if block is model.blocks[0] else torch.randn_like(freqs))
        spoiled = model.forward_samples(vids, txts, case.inputs["timestep"])
    assert all(torch.equal(a, b) for a, b in zip(clean, spoiled))


@pytest.mark.parametrize("variant", ["3b", "7b"])
def test_rope_tables_stay_fp32_in_low_precision_models(variant):
    model = random_model(variant)
    want = model.blocks[0].attn.rope.video_table((2, 3, 4), 5, torch.device("cpu"))
    model.to(torch.bfloat16)
    got = model.blocks[0].attn.rope.video_table((2, 3, 4), 5, torch.device("cpu"))
    assert all(t.dtype == torch.float32 and torch.equal(t, w) for t, w in zip(got, want))


def test_rope_frequency_formulas_of_the_full_models():
    from seedvr_local.models.rope import MMRope3d, PixelRope3d

    lang = MMRope3d(rope_dim=128).frequencies().double()
    assert lang.shape == (21,)
    torch.testing.assert_close(lang, 10000.0 ** (-2 * torch.arange(21).double() / 42), rtol=1e-6, atol=0)
    pixel = PixelRope3d(dim=64).frequencies().double()
    torch.testing.assert_close(pixel, torch.linspace(1, 128, 10).double() * math.pi, rtol=1e-6, atol=0)


def test_odd_latent_size_is_a_clear_error():
    model = random_model("7b")
    vids, txts = random_inputs([(1, 15, 16)], [4])
    with pytest.raises(ValueError, match="multiples of 2"):
        model.forward_samples(vids, txts, 1000.0)


# --------------------------------------------------------------------------------------------- configs


def test_full_size_configs_on_meta_device():
    expected = [(DiTConfig.seedvr2_3b(), 3_391_476_448, 635), (DiTConfig.seedvr2_7b(), 8_239_608_232, 1128)]
    for cfg, params, tensors in expected:
        with torch.device("meta"):
            model = NaDiT.from_config(cfg)
        state = model.state_dict()
        assert len(state) == tensors
        assert sum(t.numel() for t in state.values()) == params


def test_config_from_official_dicts():
    for case in DIT_CASES:
        cfg = DiTConfig.from_dict(case.config, case.kind.removeprefix("dit"))
        assert DiTConfig.from_dict(cfg.to_dict()) == cfg
    official = {**DiTConfig.seedvr2_3b().to_dict(), "msa_type": "None", "block_type": ["mmdit_sr"] * 32}
    del official["variant"]
    assert official["vid_out_norm"] == "fusedrms" and "output_norm" not in official
    assert DiTConfig.from_dict(official, "3b") == DiTConfig.seedvr2_3b()
    with pytest.raises(ValueError, match="unknown field.*bogus"):
        DiTConfig.from_dict({**official, "bogus": 1}, "3b")
    with pytest.raises(ValueError, match="unknown field.*qk_rope"):
        DiTConfig.from_dict({**official, "qk_rope": True}, "3b")
    with pytest.raises(ValueError, match="needs mm_layers"):
        DiTConfig.from_dict({k: v for k, v in official.items() if k != "mm_layers"}, "3b")
    with pytest.raises(ValueError, match="vid_out_norm must be an RMS norm"):
        DiTConfig.from_dict({**official, "vid_out_norm": "layer"}, "3b")


def test_model_config_is_checked_and_strict():
    model = random_model("3b")
    assert model.config.window == [(4, 3, 3)] * 3 and model.config.patch_size == (1, 2, 2)
    assert model.config.output_norm == "fusedrms"
    assert isinstance(model.vid_out_norm, torch.nn.Module)  # the submodule, not a config value
    assert {k: v for k, v in model.config.items() if not k.startswith("_")} == tiny_config("3b")
    with pytest.raises(TypeError, match="bogus"):
        NaDiT(**tiny_config("7b"), bogus=1)
    with pytest.raises(ValueError, match="the 7b DiT has no mm_layers"):
        NaDiT(**{**tiny_config("7b"), "mm_layers": 2})
    with pytest.raises(ValueError, match="emb_dim"):
        NaDiT(**{**tiny_config("7b"), "emb_dim": 100})


@pytest.mark.parametrize("variant", ["3b", "7b"])
def test_save_and_load_pretrained(tmp_path, variant):
    model = random_model(variant)
    model.save_pretrained(tmp_path)
    loaded = NaDiT.from_pretrained(tmp_path)
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == tiny_config(variant)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    vids, txts = random_inputs([(1, 8, 10), (2, 6, 4)], [3, 5])
    with torch.no_grad():
        want, got = model.forward_samples(vids, txts, 1000.0), loaded.forward_samples(vids, txts, 1000.0)
    assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_load_in_half_precision_keeps_the_modulation_offsets_fp32(tmp_path):
    model = random_model("3b")
    model.save_pretrained(tmp_path)
    loaded = NaDiT.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in loaded.named_parameters()}
    assert all((d == torch.float32) == (".ada." in f".{name}" or "_ada." in name) for name, d in dtypes.items())
    assert torch.equal(loaded.vid_out_ada.out_shift, model.vid_out_ada.out_shift)  # not rounded
    assert loaded.dtype == torch.bfloat16
    vids, txts = random_inputs([(1, 8, 10)], [3])
    with torch.no_grad():
        out = loaded.forward_samples(vids, txts, 1000.0)[0]
        reference = model.forward_samples(vids, txts, 1000.0)[0]
    assert out.dtype == torch.bfloat16
    assert_within(out.float(), reference, DIT_LIMITS[torch.bfloat16], "bf16 load, fp32 offsets")


# ------------------------------------------------------------------------------------------ kernel paths


def run_models_with_triton(out_path: str) -> None:
    """Subprocess entry (TRITON_INTERPRET=1): the tiny 3B and 7B forwards with the Triton kernels, with the
    windows grouped by shape (SDPA) and packed for a varlen kernel (a stand-in here) as on a GPU."""
    from seedvr_local.models import window_attention

    window_attention._torch_varlen = lambda: _reference_varlen
    window_attention.attention_backend_available = lambda *args: True
    torch.save({**_kernel_path_outputs("sdpa", "triton"), **_kernel_path_outputs("torch_varlen", "triton")}, out_path)


def _kernel_path_outputs(attention: str, kernel_backend: str) -> dict[str, torch.Tensor]:
    outputs = {}
    for variant in ("3b", "7b"):
        for dtype in (torch.float32, torch.float16):
            model = random_model(variant).to(dtype)
            model.set_kernel_backend(kernel_backend)
            model.set_window_attention_backend(attention)
            vids, txts = random_inputs([(1, 8, 10), (1, 6, 4)], [3, 5])
            with torch.no_grad():
                out = model.forward_samples([v.to(dtype) for v in vids], [t.to(dtype) for t in txts], 1000.0)
            outputs[f"{variant}-{dtype}-{attention}"] = torch.cat([o.flatten() for o in out])
    return outputs


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed (optional)")
def test_model_with_triton_kernels_matches_torch_path(tmp_path):
    """The whole DiT with its norms, modulations, residuals and RoPE through the Triton kernels (run by Triton's
    CPU interpreter in a subprocess, since TRITON_INTERPRET must be set before triton is imported), against
    the PyTorch references with SDPA."""
    out = tmp_path / "triton.pt"
    code = "import sys; from tests.test_dit import run_models_with_triton as r; r(sys.argv[1])"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    triton_out = torch.load(out)
    expected = _kernel_path_outputs("sdpa", "torch")
    assert len(triton_out) == 2 * len(expected)
    for name, got in triton_out.items():
        tol = 1e-5 if "float32" in name else 2e-2
        want = expected[name.replace("torch_varlen", "sdpa")]
        torch.testing.assert_close(got, want, atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")


def test_fp16_keeps_a_residual_stream_beyond_its_range():
    """Large gates push the residual stream past fp16's 65504; fp16 weights must still match fp32."""
    model = random_model("3b")
    with torch.no_grad():
        for block in model.blocks:
            block.ada.vid_branch.attn_gate.fill_(50000.0)
    peaks = []
    model.blocks[-2].register_forward_hook(lambda module, args, out: peaks.append(out[0].abs().max().item()))
    vids, txts = random_inputs([(1, 8, 10)], [3])
    with torch.no_grad():
        expected = model.forward_samples(vids, txts, 1000.0)[0]
        half = model.to(torch.float16).forward_samples([v.half() for v in vids], [t.half() for t in txts], 1000.0)[0]
    assert peaks[0] > 65504  # the test would pass trivially otherwise
    assert torch.isfinite(half).all()
    assert_within(half.float(), expected, DIT_LIMITS[torch.float16], "fp16 residual beyond 65504")
