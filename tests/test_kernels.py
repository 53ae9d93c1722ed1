"""The kernels package: backend selection, the PyTorch references against the models' own maths, the Triton
kernels against the references (through Triton's CPU interpreter), and the kernel benchmark's smoke run.

The Triton cases run in one subprocess with `TRITON_INTERPRET=1`, which must be set before triton is imported:
this process (and the other test files) keep the normal backend. The subprocess writes the kernels' outputs; the
comparisons happen here, on inputs regenerated from the same seed. The interpreter has no bf16 arithmetic, so
those cases are fp32 and fp16; for bf16 the kernels are compiled here for an H100 (no GPU needed), and on a GPU
`python -m benchmarks.kernels` reports each kernel's largest difference from its reference.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from seedvr_local import devices, kernels
from seedvr_local.kernels import backend, reference
from tests import requires

REPO = Path(__file__).resolve().parents[1]
NO_TRITON = "optional dependency: pip install 'seedvr-local[triton]'"
# One fixed seed for the kernel cases, so a run is reproducible; KERNEL_TEST_SEED explores others on demand.
KERNEL_TEST_SEED = int(os.environ.get("KERNEL_TEST_SEED", "20260"))


# ------------------------------------------------------------------------------------------- selection

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _fake_machine(
    monkeypatch, *, triton: bool, interpret: bool = False, capability: tuple[int, int] = (9, 0)
) -> None:
    monkeypatch.setattr(backend, "triton_version", lambda: "3.test" if triton else None)
    monkeypatch.setattr(devices, "cuda_capability", lambda device: capability)
    monkeypatch.setenv("TRITON_INTERPRET", "1" if interpret else "0")


@pytest.mark.parametrize(
    "triton_ok, device, expected",
    [(True, CUDA, "triton"), (True, CPU, "torch"), (False, CUDA, "torch"), (False, CPU, "torch")],
)
def test_auto_uses_triton_only_with_cuda_and_triton(monkeypatch, triton_ok, device, expected):
    _fake_machine(monkeypatch, triton=triton_ok)
    assert backend.resolve("auto", device)[0] == expected


def test_auto_stays_on_torch_under_the_interpreter(monkeypatch):
    # The interpreter is for tests: only an explicit "triton" runs kernels on CPU tensors.
    _fake_machine(monkeypatch, triton=True, interpret=True)
    assert backend.resolve("auto", CPU)[0] == "torch"
    assert backend.resolve("triton", CPU)[0] == "triton"


def test_gpus_older_than_triton_supports_use_torch(monkeypatch):
    _fake_machine(monkeypatch, triton=True, capability=(6, 1))
    assert backend.resolve("auto", CUDA) == ("torch", "auto: GPU compute capability 6.1 is below Triton's 7.0")
    with pytest.raises(kernels.KernelBackendError, match="compute capability 7.0 or newer, this one is 6.1"):
        backend.resolve("triton", CUDA)


def test_torch_is_always_available(monkeypatch):
    _fake_machine(monkeypatch, triton=False)
    assert backend.resolve("torch", CUDA) == ("torch", "asked for")


@pytest.mark.parametrize(
    "triton_ok, device, message",
    [(False, CUDA, "needs the optional triton package"), (True, CPU, "needs a CUDA GPU")],
)
def test_forced_triton_fails_clearly(monkeypatch, triton_ok, device, message):
    _fake_machine(monkeypatch, triton=triton_ok)
    with pytest.raises(kernels.KernelBackendError, match=message):
        backend.resolve("triton", device)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="auto, triton, torch"):
        backend.resolve("cuda", CPU)


class TinyModel(kernels.ModelBackends, ModelMixin, ConfigMixin):
    """A model with one kernel op, to watch the per-model choice."""

    @register_to_config
    def __init__(self, dim: int = 8):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))

    @kernels.runs_kernels
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, 1e-5)


@pytest.fixture
def launches(monkeypatch) -> list[str]:
    """The Triton kernels launched (each one runs its reference instead, so no triton is needed)."""
    from seedvr_local.kernels import ops

    launched: list[str] = []

    def row_op(x, *, eps, weight, **_):
        return None, reference.rms_norm_modulate(x, eps=eps, weight=weight)

    def fake_module(name: str):
        launched.append(name)
        return SimpleNamespace(row_op=row_op)

    monkeypatch.setattr(ops, "_triton_module", fake_module)
    return launched


def test_each_model_runs_its_own_backend(monkeypatch, launches):
    _fake_machine(monkeypatch, triton=True, interpret=True)  # CPU tensors may run the kernels
    fused, plain = TinyModel(), TinyModel()
    assert fused.set_kernel_backend("triton") == "triton" and fused.kernel_backend == "triton"
    assert plain.set_kernel_backend("torch") == "torch"
    x = torch.randn(5, 8)
    with torch.no_grad():
        plain(x)
        assert launches == []
        torch.testing.assert_close(fused(x), plain(x))
        assert launches == ["rmsnorm"]
        kernels.rms_norm(x, None, 1e-5)  # outside any model call: the reference
    assert launches == ["rmsnorm"]


def test_a_refused_mode_keeps_the_previous_choice(monkeypatch):
    _fake_machine(monkeypatch, triton=False)
    model = TinyModel()
    assert model.set_kernel_backend("torch") == "torch"
    with pytest.raises(kernels.KernelBackendError, match="needs the optional triton package"):
        model.set_kernel_backend("triton")
    with pytest.raises(ValueError, match="auto, triton, torch"):
        model.set_kernel_backend("fast")
    assert model.kernel_backend == "torch"


def test_choice_is_logged_once_per_model(monkeypatch, caplog):
    _fake_machine(monkeypatch, triton=False)
    model = TinyModel()
    with caplog.at_level(logging.INFO, logger="seedvr_local.kernels.backend"):
        model.set_kernel_backend("auto")
        model.set_kernel_backend("auto")
        model.set_kernel_backend("torch")  # the same backend, asked for
        model(torch.randn(2, 8))
        model.to(torch.float64)(torch.randn(2, 8, dtype=torch.float64))  # resolved again, still torch
    records = [r.getMessage() for r in caplog.records if r.name == "seedvr_local.kernels.backend"]
    assert records == ["TinyModel kernels: torch (auto: triton not installed)"]


def test_a_model_never_set_resolves_the_environment_variable(monkeypatch, launches):
    _fake_machine(monkeypatch, triton=True, interpret=True)
    monkeypatch.setenv("SEEDVR_KERNELS", "triton")
    model = TinyModel()
    with torch.no_grad():
        model(torch.randn(2, 8))
    assert model.kernel_backend == "triton" and launches == ["rmsnorm"]
    monkeypatch.setenv("SEEDVR_KERNELS", "sometimes")
    with pytest.raises(ValueError, match="sometimes"):
        TinyModel()(torch.randn(2, 8))


def test_moving_a_model_resolves_its_mode_again(monkeypatch):
    _fake_machine(monkeypatch, triton=True)
    model = TinyModel()
    model.set_kernel_backend("auto")
    assert model.kernel_backend == "torch"  # on the CPU
    monkeypatch.setattr(TinyModel, "device", property(lambda self: CUDA))  # as if moved to a GPU
    assert model.kernel_backend == "triton"


def test_triton_backend_runs_the_reference_on_cpu_tensors(monkeypatch):
    # A triton backend with CPU tensors (no interpreter) must not launch a kernel, just use the reference.
    _fake_machine(monkeypatch, triton=True)
    monkeypatch.setattr("seedvr_local.kernels.ops._triton_module", lambda name: pytest.fail(f"launched the {name} kernel"))
    x = torch.randn(5, 8)
    with kernels.use("triton"):
        assert backend.use_triton(x) is False
        torch.testing.assert_close(kernels.rms_norm(x, None, 1e-5), reference.rms_norm_modulate(x, eps=1e-5))


def test_tensors_needing_gradients_use_the_references(monkeypatch):
    _fake_machine(monkeypatch, triton=True, interpret=True)
    monkeypatch.setattr("seedvr_local.kernels.ops._triton_module", lambda name: pytest.fail(f"launched the {name} kernel"))
    weight = torch.ones(8, requires_grad=True)
    with kernels.use("triton"):
        out = kernels.rms_norm(torch.randn(5, 8), weight, 1e-5)
    out.sum().backward()
    assert weight.grad is not None


def test_compiled_graphs_use_the_references(monkeypatch):
    _fake_machine(monkeypatch, triton=True, interpret=True)
    x = torch.empty(1)
    with kernels.use("triton"):
        assert backend.use_triton(x) is True
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert backend.use_triton(x) is False


# ----------------------------------------------------------------------- references vs the models' maths


def rotate_as_complex(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE written independently: adjacent pairs as complex numbers times e^(i angle); the rest copied."""
    pairs = cos.shape[-1]
    z = torch.view_as_complex(x[..., : 2 * pairs].double().unflatten(-1, (-1, 2)).contiguous())
    rotated = torch.view_as_real(z * torch.polar(torch.ones_like(cos.double()), torch.atan2(sin, cos).double()))
    return torch.cat((rotated.flatten(-2).to(x.dtype), x[..., 2 * pairs :]), dim=-1)


@pytest.mark.parametrize("rope_kind", ["mmrope3d", "pixel3d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotate_pairs_with_the_model_rope_tables(rope_kind, dtype):
    from seedvr_local.models.rope import MMRope3d, PixelRope3d

    head_dim, heads, window = 20, 3, (2, 3, 4)
    rope = MMRope3d(head_dim) if rope_kind == "mmrope3d" else PixelRope3d(head_dim // 2)
    cos, sin = rope.video_table(window, 5, torch.device("cpu"))
    seq = cos.shape[0]
    assert 2 * cos.shape[-1] < head_dim  # the partial rotation: trailing dims are copied
    g = torch.Generator().manual_seed(2)
    flat = torch.randn(60, heads, head_dim, generator=g).to(dtype)
    index = torch.randperm(60, generator=g)[: 2 * seq].view(2, seq)
    expected = kernels.rotate_pairs(flat[index], cos.unsqueeze(-2), sin.unsqueeze(-2))
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(expected, rotate_as_complex(flat[index], cos.unsqueeze(-2), sin.unsqueeze(-2)),
                               atol=tol, rtol=tol)
    assert torch.equal(kernels.rotate_pairs(flat, cos, sin, index=index), expected)
    assert torch.equal(kernels.rotate_pairs(flat[index], cos.unsqueeze(-2), sin.unsqueeze(-2)), expected)
    buffer = torch.zeros(2, seq + 3, heads, head_dim, dtype=dtype)
    kernels.rotate_pairs(flat, cos, sin, index=index, out=buffer[:, :seq])
    assert torch.equal(buffer[:, :seq], expected) and not buffer[:, seq:].any()


def _frame_group_norm_silu(x: torch.Tensor, groups: int, weight, bias, eps: float) -> torch.Tensor:
    """The VAE's per-frame GroupNorm (fp32 maths, rounded) followed by SiLU, written independently."""
    frames = x.transpose(1, 2).flatten(0, 1)
    y = F.group_norm(frames.float(), groups, weight.float(), bias.float(), eps).to(x.dtype)
    return F.silu(y).unflatten(0, (x.shape[0], x.shape[2])).transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_norm_silu_reference_is_frame_group_norm(dtype):
    g = torch.Generator().manual_seed(3)
    x = (3 * torch.randn(2, 12, 3, 6, 5, generator=g) + 1).to(dtype)
    weight, bias = torch.randn(12, generator=g), torch.randn(12, generator=g)
    expected = _frame_group_norm_silu(x, 4, weight, bias, 1e-6)
    assert torch.equal(kernels.group_norm_silu(x, 4, weight, bias, eps=1e-6), expected)
    assert torch.equal(kernels.group_norm_silu(x[:, :, 1], 4, weight, bias, eps=1e-6), expected[:, :, 1])
    # With statistics from outside (var_mean here, group_norm's own above): fp32 rounding apart, so at most a
    # rare 1-ulp flip after the cast to the activation dtype.
    given = kernels.group_norm_silu(x, 4, weight, bias, stats=kernels.group_norm_stats(x, 4, 1e-6))
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(given, expected, rtol=eps, atol=4 * eps * expected.abs().max().item())


def test_whole_frame_statistics_from_tiles():
    """Moments of the tiles a frame is cut into merge to the frame's moments (up to fp32 summation order), and a
    tile normalised with them is exactly that crop of the frame normalised with them (exact tiled decoding)."""
    g = torch.Generator().manual_seed(4)
    x = (2 * torch.randn(1, 8, 2, 10, 13, generator=g) + 50).to(torch.float32)  # a large mean: no cancellation
    weight, bias = torch.randn(8, generator=g), torch.randn(8, generator=g)
    tiles = [x[..., :4, :6], x[..., :4, 6:], x[..., 4:, :9], x[..., 4:, 9:]]
    merged = kernels.merge_moments([kernels.group_norm_moments(t, 2) for t in tiles])
    whole = kernels.group_norm_moments(x, 2)
    assert merged.count == whole.count == 4 * 10 * 13
    torch.testing.assert_close(merged.mean, whole.mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(merged.m2, whole.m2, rtol=1e-5, atol=0)
    stats = merged.stats(1e-6)
    crop = (..., slice(4, None), slice(9, None))
    # The normalisation (our code) is exact: the same float32 operations on the same values.
    normalized = kernels.group_norm_silu(x, 2, weight, bias, stats=stats, silu=False)
    assert torch.equal(kernels.group_norm_silu(x[crop], 2, weight, bias, stats=stats, silu=False), normalized[crop])
    # SiLU then runs on bit-identical inputs, but PyTorch's CPU SiLU computes the body of its loop with vector
    # instructions and the remainder with the scalar ones, which differ in the last bits (up to 2 ulp over 20k
    # values on AVX512, and each element's path depends on its position in the tensor). So the tile, laid out
    # differently from the frame, may differ from it by that much, and no more.
    full = kernels.group_norm_silu(x, 2, weight, bias, stats=stats)
    tile = kernels.group_norm_silu(x[crop], 2, weight, bias, stats=stats)
    assert _ulp_distance(tile, full[crop]) <= PLATFORM_SILU_ULP


#: Largest difference between PyTorch's vectorised and scalar CPU SiLU on the same float32 input, in ulp
#: (`test_platform_silu_depends_on_the_position_in_the_tensor` measures it).
PLATFORM_SILU_ULP = 2


def _ulp_distance(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in float32 ulp between same-signed elements (their integer bit patterns differ by that)."""
    assert a.dtype == b.dtype == torch.float32 and bool(((a >= 0) == (b >= 0)).all())
    return int((a.view(torch.int32).long() - b.view(torch.int32).long()).abs().max())


def test_platform_silu_depends_on_the_position_in_the_tensor():
    """The cause of the bound above, shown on the platform alone: SiLU of each value on its own (the scalar path)
    against SiLU of all of them at once (mostly the vector path). The same inputs give results up to
    PLATFORM_SILU_ULP apart; where both paths agree everywhere (another CPU) the bound is simply not needed."""
    values = 4 * torch.randn(4096, generator=torch.Generator().manual_seed(6))
    together = F.silu(values)
    alone = torch.cat([F.silu(v.reshape(1).clone()) for v in values])
    assert _ulp_distance(together, alone) <= PLATFORM_SILU_ULP


def test_group_norm_reference_chunking_is_exact(monkeypatch):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 16, 2, 6, 6, generator=g).to(torch.bfloat16)
    weight, bias = torch.randn(16, generator=g), torch.randn(16, generator=g)
    whole = kernels.group_norm_silu(x, 8, weight, bias)
    whole_stats = kernels.group_norm_stats(x, 8, 1e-6)
    given = kernels.group_norm_silu(x, 8, weight, bias, stats=whole_stats)
    monkeypatch.setattr(reference, "_GROUPNORM_CHUNK_BYTES", 4 * 2 * 36 * 3)  # 3 groups at a time
    assert torch.equal(kernels.group_norm_silu(x, 8, weight, bias), whole)
    assert torch.equal(kernels.group_norm_stats(x, 8, 1e-6).rstd, whole_stats.rstd)
    assert torch.equal(kernels.group_norm_silu(x, 8, weight, bias, stats=whole_stats), given)


def test_bad_arguments_are_reported():
    x = torch.randn(6, 8)
    with pytest.raises(ValueError, match="need an index"):
        kernels.rms_norm_modulate(x, torch.ones(3, 8), torch.zeros(3, 8), eps=1e-5)
    with pytest.raises(ValueError, match="go together"):
        kernels.rms_norm_modulate(x, torch.ones(8), None, eps=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        kernels.rotate_pairs(torch.randn(2, 5, 2, 8), torch.ones(5, 5), torch.zeros(5, 5))
    with pytest.raises(ValueError, match="out must be"):
        kernels.rotate_pairs(torch.randn(2, 5, 2, 8), torch.ones(5, 4), torch.zeros(5, 4), out=torch.empty(2, 6, 2, 8))
    with pytest.raises(ValueError, match="do not split"):
        kernels.group_norm_silu(torch.randn(1, 6, 4, 4), 4, None, None)
    with pytest.raises(ValueError, match="statistics must be shaped"):
        kernels.group_norm_silu(torch.randn(1, 8, 2, 4, 4), 4, None, None, stats=kernels.group_norm_stats(
            torch.randn(1, 8, 4, 4), 4, 1e-6))  # fmt: skip


# ------------------------------------------------------------------- Triton kernels vs references


@dataclass
class Case:
    """Inputs from a seed; the same public op is run with the triton backend (in the interpreter subprocess)
    and its reference here."""

    name: str
    make: Callable[[torch.Generator, torch.dtype], dict[str, Any]]
    op: Callable[..., Any]
    ref: Callable[..., Any]
    rounded: bool = True  # outputs are rounded through the half dtype (not sums kept in fp32)


def _rows(g, dtype, n=37, d=100, samples=3):
    # 37 rows x 100 dims: neither a power of two, and the last program's block of rows is ragged.
    x = torch.randn(n, d, generator=g).to(dtype)
    index = torch.randint(0, samples, (n,), generator=g)
    scale = 1 + 0.2 * torch.randn(samples, d, generator=g)
    return x, index, scale, torch.randn(samples, d, generator=g)


def _make_norm_plain(g, dtype):
    return dict(x=_rows(g, dtype)[0], eps=1e-5)


def _make_norm_affine_qk(g, dtype):
    qkv = torch.randn(29, 3 * 5 * 24, generator=g).to(dtype)
    return dict(x=qkv.unflatten(-1, (3, 5, 24)).unbind(1)[1], weight=torch.randn(24, generator=g), eps=1e-5)


def _make_norm_mod_indexed(g, dtype):
    x, index, scale, shift = _rows(g, dtype)
    return dict(x=x, scale=scale, shift=shift, index=index, weight=torch.randn(100, generator=g), eps=1e-6)


def _make_norm_mod_emb_view(g, dtype):
    # The model's modulation slot: a strided view of the (B, D, 3) embedding, one sample, broadcast.
    x = _rows(g, dtype)[0]
    emb = torch.randn(1, 100, 3, generator=g)
    emb[..., 1] += 1
    return dict(x=x, scale=emb[..., 1], shift=emb[..., 0], eps=1e-5, out_dtype=torch.float32)


def _make_gated(g, dtype):
    x, index, gate, _ = _rows(g, dtype)
    return dict(residual=x, h=torch.randn(x.shape, generator=g).to(dtype), gate=gate, index=index)


def _make_fused(g, dtype):
    x, index, scale, shift = _rows(g, dtype, n=45, d=72, samples=2)
    gate = torch.randn(2, 72, generator=g)
    h = (3 * torch.randn(x.shape, generator=g)).to(dtype)
    return dict(residual=x, h=h, gate=gate, scale=scale, shift=shift, index=index, eps=1e-5)


def _make_fused_fp32_residual(g, dtype):
    # fp16-safe mode: an fp32 residual stream fed by a half-precision branch.
    kw = _make_fused(g, dtype)
    return {**kw, "residual": kw["residual"].float(), "out_dtype": dtype}


def _table(g, seq, pairs):
    angles = 10 * torch.rand(seq, pairs, generator=g)
    return angles.cos(), angles.sin()


def _make_rope_partial(g, dtype):
    cos, sin = _table(g, 7, 4)  # 8 of 10 head dims rotate, 2 are copied
    return dict(x=torch.randn(2, 7, 3, 10, generator=g).to(dtype), cos=cos, sin=sin)


def _make_rope_full_text(g, dtype):
    cos, sin = _table(g, 11, 3)  # text: (L, heads, D), every dim rotated, per-head (L, 1, P) table
    qkv = torch.randn(11, 3 * 5 * 6, generator=g).to(dtype)
    return dict(x=qkv.unflatten(-1, (3, 5, 6)).unbind(1)[0], cos=cos.unsqueeze(1), sin=sin.unsqueeze(1))


def _make_rope_gather(g, dtype):
    cos, sin = _table(g, 9, 5)
    flat = torch.randn(50, 3, 12, generator=g).to(dtype)
    return dict(x=flat, cos=cos, sin=sin, index=torch.randperm(50, generator=g)[:27].view(3, 9))


def _rope_into_slice(x, cos, sin, index):
    buffer = torch.zeros(index.shape[0], index.shape[1] + 4, *x.shape[1:], dtype=x.dtype, device=x.device)
    kernels.rotate_pairs(x, cos, sin, index=index, out=buffer[:, : index.shape[1]])
    return buffer


def _rope_into_slice_ref(x, cos, sin, index):
    buffer = torch.zeros(index.shape[0], index.shape[1] + 4, *x.shape[1:], dtype=x.dtype, device=x.device)
    buffer[:, : index.shape[1]] = reference.rotate_pairs(x, cos, sin, index=index)
    return buffer


def _gn_inputs(g, dtype, shape, groups, offset=1.0, channels_last=False, crop=False):
    x = (2 * torch.randn(shape, generator=g) + offset).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)
    if crop:  # a tile of a bigger frame: H and W strides no longer merge
        x = x[..., 1:-2, 3:]
    c = shape[1]
    return dict(x=x, num_groups=groups, weight=torch.randn(c, generator=g), bias=torch.randn(c, generator=g))


def _make_gn_video(g, dtype):  # 3 channels a group, 35 pixels a frame: one ragged tile a frame
    return _gn_inputs(g, dtype, (2, 12, 3, 5, 7), 4)


def _make_gn_channels_last_crop(g, dtype):  # a strided tile of a channels-last frame: 3 ragged pixel blocks
    return _gn_inputs(g, dtype, (1, 12, 2, 36, 70), 3, offset=20.0, channels_last=True, crop=True)


def _make_gn_image(g, dtype):
    return {**_gn_inputs(g, dtype, (2, 6, 9, 11), 3), "silu": False}


def _make_gn_given_stats(g, dtype):
    kw = _gn_inputs(g, dtype, (1, 8, 2, 7, 9), 4)
    stats = reference.group_norm_stats(torch.randn(1, 8, 2, 20, 20, generator=g), 4, 1e-6)
    return {**kw, "stats": stats, "weight": None}


def _make_gn_moments(g, dtype):
    kw = _gn_inputs(g, dtype, (1, 12, 1, 40, 30), 3, offset=20.0, crop=True)  # 3 channel blocks x 1 pixel block
    return dict(x=kw["x"], num_groups=3)


def _moments(x, num_groups):
    m = kernels.group_norm_moments(x, num_groups)
    return torch.tensor(float(m.count)), m.mean, m.m2


def _moments_ref(x, num_groups):
    m = reference.group_norm_moments(x, num_groups)
    return torch.tensor(float(m.count)), m.mean, m.m2


def _make_softmax(g, dtype):  # 3 ragged steps of the kernel's 2048-wide loop, peaked rows like trained attention
    return dict(scores=8 * torch.randn(5, 2 * 2048 + 37, generator=g), scale=0.0441941738, out_dtype=dtype)


def _make_softmax_row_view(g, dtype):  # rows of a wider matrix: the row stride is not the row length
    return {**_make_softmax(g, dtype), "scores": 8 * torch.randn(3, 1000, generator=g)[:, 7:-30]}


def _gn_ref(x, num_groups, weight, bias, eps=1e-6, stats=None, silu=True):
    stats = stats if stats is not None else reference.group_norm_stats(x, num_groups, eps)
    return reference.group_norm_silu(x, stats, weight, bias, silu=silu)


def _norm_ref(x, eps, weight=None, scale=None, shift=None, index=None, out_dtype=None):
    return reference.rms_norm_modulate(x, scale, shift, eps=eps, weight=weight, index=index, out_dtype=out_dtype)


def _fused_ref(residual, h, gate, eps, scale=None, shift=None, index=None, out_dtype=None):
    return reference.gated_residual_rms_norm_modulate(
        residual, h, gate, scale, shift, eps=eps, index=index, out_dtype=out_dtype
    )


def _norm_op(x, eps, **kw):
    return kernels.rms_norm_modulate(x, eps=eps, **kw)


def _fused_op(residual, h, gate, eps, **kw):
    return kernels.gated_residual_rms_norm_modulate(residual, h, gate, eps=eps, **kw)


CASES = [
    Case("rms_norm", _make_norm_plain, _norm_op, _norm_ref),
    Case("rms_norm_affine_qk_view", _make_norm_affine_qk, _norm_op, _norm_ref),
    Case("rms_norm_modulate_indexed", _make_norm_mod_indexed, _norm_op, _norm_ref),
    Case("rms_norm_modulate_emb_view", _make_norm_mod_emb_view, _norm_op, _norm_ref),
    Case("gated_residual", _make_gated, kernels.gated_residual, reference.gated_residual),
    Case("gated_residual_norm", _make_fused, _fused_op, _fused_ref),
    Case("gated_residual_norm_fp32_residual", _make_fused_fp32_residual, _fused_op, _fused_ref),
    Case("rope_partial", _make_rope_partial, kernels.rotate_pairs, reference.rotate_pairs),
    Case("rope_text_view", _make_rope_full_text, kernels.rotate_pairs, reference.rotate_pairs),
    Case("rope_gather", _make_rope_gather, kernels.rotate_pairs, reference.rotate_pairs),
    Case("rope_gather_into_slice", _make_rope_gather, _rope_into_slice, _rope_into_slice_ref),
    Case("group_norm_silu_video", _make_gn_video, kernels.group_norm_silu, _gn_ref),
    Case("group_norm_silu_channels_last_tile", _make_gn_channels_last_crop, kernels.group_norm_silu, _gn_ref),
    Case("group_norm_image_no_silu", _make_gn_image, kernels.group_norm_silu, _gn_ref),
    Case("group_norm_silu_given_stats", _make_gn_given_stats, kernels.group_norm_silu, _gn_ref),
    Case("group_norm_moments_tile", _make_gn_moments, _moments, _moments_ref, rounded=False),
    # The row sums stay fp32: compare them (and the rounded exponentials) by tolerance only.
    Case("softmax_rows", _make_softmax, kernels.unnormalized_softmax, reference.unnormalized_softmax, rounded=False),
    Case("softmax_row_view", _make_softmax_row_view, kernels.unnormalized_softmax, reference.unnormalized_softmax,
         rounded=False),
]
INTERPRETER_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def _case_seed(seed: int, case: Case, dtype_name: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed + 1000 * CASES.index(case) + (dtype_name == "fp16"))


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def run_interpreter_cases(out_path: str, seed: int) -> None:
    """Subprocess entry (TRITON_INTERPRET=1): run every case's op with the triton backend, save the outputs
    and which kernel modules each case launched."""
    from seedvr_local.kernels import ops

    assert backend.interpreter_enabled(), "run with TRITON_INTERPRET=1"
    launched: list[str] = []
    real_module = ops._triton_module
    ops._triton_module = lambda name: launched.append(name) or real_module(name)
    results = {}
    for case in CASES:
        for dtype_name, dtype in INTERPRETER_DTYPES.items():
            launched.clear()
            with kernels.use("triton"):
                outputs = _as_tuple(case.op(**case.make(_case_seed(seed, case, dtype_name), dtype)))
            results[f"{case.name}-{dtype_name}"] = {"outputs": outputs, "launched": sorted(set(launched))}
    torch.save(results, out_path)


@pytest.fixture(scope="module")
def interpreter_results(tmp_path_factory):
    if not backend.triton_available():
        requires.missing("triton", NO_TRITON)
    seed = KERNEL_TEST_SEED
    out = tmp_path_factory.mktemp("kernels") / "interpreter.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    code = "import sys; from tests.test_kernels import run_interpreter_cases as r; r(sys.argv[1], int(sys.argv[2]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out), str(seed)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"interpreter run failed (KERNEL_TEST_SEED={seed}):\n{proc.stderr[-4000:]}"
    return seed, torch.load(out)


def _assert_matches(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, case: Case, seed: int) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(
        got, want, **_tolerance(dtype, want), msg=lambda m: f"{m}\n(reproduce with KERNEL_TEST_SEED={seed})"
    )
    if dtype != torch.float32 and case.rounded:
        # Rounding at the same points makes almost every element bit-identical; a missing or extra cast
        # stays within the tolerance above but shows up here.
        differ = (got != want).float().mean().item()
        assert differ <= 0.01, f"{differ:.1%} of the elements differ (KERNEL_TEST_SEED={seed})"


def _tolerance(dtype: torch.dtype, expected: torch.Tensor) -> dict[str, float]:
    """Both sides round at the same points; they differ only in fp32 summation order and FMA contraction. In
    fp32 that is a few ulps of the largest value; in fp16 it may flip one intermediate rounding, i.e. one ulp
    of the intermediate, scaled by the modulation (bounded by the output's largest magnitude)."""
    if not expected.is_floating_point():
        return dict(rtol=0, atol=0)
    eps = torch.finfo(dtype).eps
    units = 16 if dtype == torch.float32 else 4
    magnitude = expected.float().abs().max().item() if expected.numel() else 0.0
    return dict(rtol=units * eps, atol=units * eps * max(magnitude, 1.0))


@pytest.mark.parametrize("dtype_name", INTERPRETER_DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_triton_kernel_matches_reference(interpreter_results, case, dtype_name):
    seed, results = interpreter_results
    result = results[f"{case.name}-{dtype_name}"]
    module = case.name.split("_")[0]
    expected_module = {
        "rms": "rmsnorm", "gated": "rmsnorm", "rope": "rope", "group": "groupnorm", "softmax": "softmax"
    }[module]  # fmt: skip
    assert result["launched"] == [expected_module], f"the triton backend did not launch its kernel: {result}"
    dtype = INTERPRETER_DTYPES[dtype_name]
    expected = _as_tuple(case.ref(**case.make(_case_seed(seed, case, dtype_name), dtype)))
    assert len(result["outputs"]) == len(expected)
    for got, want in zip(result["outputs"], expected):
        _assert_matches(got, want, dtype, case, seed)


def _to(value, device: str):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):  # GroupStats
        return type(value)(*(_to(v, device) for v in value))
    return value


@pytest.mark.skipif(
    not (torch.cuda.is_available() and backend.triton_available()), reason="needs a CUDA GPU and triton (bf16 runs)"
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_triton_kernel_matches_reference_on_cuda(monkeypatch, case, dtype):
    from seedvr_local.kernels import ops

    seed = KERNEL_TEST_SEED
    assert backend.resolve("triton", torch.device("cuda"))[0] == "triton"
    launched: list[str] = []
    real_module = ops._triton_module
    monkeypatch.setattr(ops, "_triton_module", lambda name: launched.append(name) or real_module(name))
    inputs = {k: _to(v, "cuda") for k, v in case.make(_case_seed(seed, case, "cuda"), dtype).items()}
    with kernels.use("triton"):
        outputs = _as_tuple(case.op(**inputs))
    assert launched, "the triton backend did not launch its kernel"
    expected = _as_tuple(case.ref(**inputs))
    for got, want in zip(outputs, expected):
        _assert_matches(got, want, dtype, case, seed)


# ------------------------------------------------------------- ahead-of-time compilation for the GPU


def _compile_variants(dtype: str) -> list[tuple[str, Any, dict[str, str], dict[str, Any], int]]:
    """(name, kernel, pointer types, constexprs, num_warps) as the launchers pick them for the 3B model at 2160p."""
    from seedvr_local.kernels import triton_groupnorm, triton_rmsnorm, triton_rope, triton_softmax

    p = f"*{dtype}"
    rows_ptrs = dict(x_ptr=p, h_ptr=p, res_out_ptr=p, out_ptr=p, idx_ptr="*i64")
    block_d, rows, warps = triton_rmsnorm.launch_config(2560, 32400)
    off = dict(HAS_GATE=False, NORM=True, HAS_WEIGHT=False, HAS_MOD=False, HAS_INDEX=False)
    variants = [
        ("rms_norm_modulate", triton_rmsnorm._row_kernel, rows_ptrs, {**off, "HAS_MOD": True}, block_d, rows, warps),
        ("gated_residual_rms_norm_modulate_indexed", triton_rmsnorm._row_kernel, rows_ptrs,
         dict(HAS_GATE=True, NORM=True, HAS_WEIGHT=True, HAS_MOD=True, HAS_INDEX=True), block_d, rows, warps),
        ("gated_residual", triton_rmsnorm._row_kernel, rows_ptrs, {**off, "HAS_GATE": True, "NORM": False},
         block_d, rows, warps),
        ("qk_rms_norm", triton_rmsnorm._row_kernel, rows_ptrs, {**off, "HAS_WEIGHT": True},
         *triton_rmsnorm.launch_config(128, 32400 * 20)),
    ]  # fmt: skip
    out = [(name, k, ptrs, {**flags, "ROWS": r, "BLOCK_D": bd}, w) for name, k, ptrs, flags, bd, r, w in variants]
    block_h, block_d = triton_rope.launch_config(20, 128)
    rope_ptrs = dict(x_ptr=p, out_ptr=p, idx_ptr="*i64")
    for gather in (True, False):
        out.append((f"rope_gather={gather}", triton_rope._rope_kernel, rope_ptrs,
                    dict(HAS_INDEX=gather, BLOCK_H=block_h, BLOCK_D=block_d), 4))  # fmt: skip
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    frame = torch.empty(1, 128, 1, 2160, 3840, dtype=torch_dtype, device="meta")  # the decoder's last stage
    for memory_format in ("contiguous", "channels_last"):
        x = frame if memory_format == "contiguous" else frame.to(memory_format=torch.channels_last_3d)
        geo = triton_groupnorm.layout(x)
        tile = dict(FLAT=geo["FLAT"], BLOCK_C=geo["BLOCK_C"], BLOCK_S=geo["BLOCK_S"])
        out.append((f"group_moments_{memory_format}", triton_groupnorm._moments_kernel, dict(x_ptr=p), tile, 4))
        out.append((f"group_norm_silu_{memory_format}", triton_groupnorm._norm_silu_kernel, dict(x_ptr=p, out_ptr=p),
                    dict(HAS_WEIGHT=True, HAS_BIAS=True, SILU=True, OUT_FLAT=geo["FLAT"], **tile), 4))  # fmt: skip
    out.append(("unnormalized_softmax", triton_softmax._unnormalized_softmax_kernel, dict(out_ptr=p),
                dict(BLOCK=triton_softmax._BLOCK), 8))  # fmt: skip
    return out


def _compile_for_cuda(kernel, pointers: dict[str, str], constexprs: dict[str, Any], num_warps: int, arch: int):
    """Compile a kernel to a cubin for an NVIDIA GPU of compute capability `arch`, on this machine (no GPU
    needed: triton ships ptxas). It catches what the interpreter cannot: bf16 and compiled-mode typing."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names

    def kind(name: str) -> str:
        if name in constexprs:
            return "constexpr"
        if name.endswith("_ptr"):
            return pointers.get(name, "*fp32")
        return "fp32" if name in ("eps", "scale") else "i32"

    positions = {(names.index(k),): v for k, v in constexprs.items()}
    src = ASTSource(fn=kernel, signature={n: kind(n) for n in names}, constexprs=positions)
    options = {"num_warps": num_warps, "enable_fp_fusion": False}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def _skip_without_compiler():
    if not backend.triton_available():
        requires.missing("triton", NO_TRITON)
    if backend.interpreter_enabled():
        pytest.skip("TRITON_INTERPRET=1 replaces the compiler with the interpreter")


BF16_VARIANTS = (
    [v[0] for v in _compile_variants("bf16")]
    if backend.triton_available()
    else ["all"]  # fails in CI, skips elsewhere: see _skip_without_compiler
)


@pytest.mark.parametrize("name", BF16_VARIANTS)
def test_bf16_kernels_compile_for_h100(name):
    _skip_without_compiler()
    _, kernel, pointers, constexprs, num_warps = next(v for v in _compile_variants("bf16") if v[0] == name)
    assert _compile_for_cuda(kernel, pointers, constexprs, num_warps, arch=90).asm["cubin"]


# Each pair compiles every kernel (about 4 s): the default run covers the other arch (sm80) and the other dtypes
# (fp16 runs before Ampere, fp32 when asked); the remaining pairs run with `-m slow` (.ci/slow).
_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "dtype, arch",
    [("fp16", 80), ("fp32", 80), pytest.param("bf16", 80, marks=_SLOW), pytest.param("fp16", 90, marks=_SLOW),
     pytest.param("fp32", 90, marks=_SLOW)],
)  # fmt: skip
def test_all_kernels_compile_for_gpus(dtype, arch):
    _skip_without_compiler()
    for _, kernel, pointers, constexprs, num_warps in _compile_variants(dtype):
        assert _compile_for_cuda(kernel, pointers, constexprs, num_warps, arch=arch).asm["cubin"]


# ------------------------------------------------------------------------------------------- benchmark


def test_kernel_benchmark_smoke(tmp_path, capsys):
    from benchmarks import kernels as bench

    out = tmp_path / "kernels.json"
    bench.main(["--device", "cpu", "--size", "tiny", "--repeat", "2", "--json", str(out)])
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["backend"] == "torch"
    names = {row["kernel"] for row in report["rows"]}
    assert names == {"rms_norm_modulate", "gated_residual_rms_norm_modulate", "rotate_pairs", "group_norm_silu",
                     "group_norm_stats", "unnormalized_softmax"}  # fmt: skip
    for row in report["rows"]:
        assert row["impl"] == "torch" and row["ms"] > 0 and row["gb_per_s"] > 0 and row["bytes"] > 0
        assert row["kernel"] in table
