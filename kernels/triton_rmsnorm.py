"""Triton kernel for the DiT's row ops: RMSNorm (optionally affine), AdaSingle modulation, gated residual.

One program handles `ROWS` whole rows (the RMS needs the full row), so the modulation, the gate and the
residual add come for free: the fused block seam reads the residual and the branch output once and writes the
new residual and the next layer's modulated input, instead of four separate elementwise passes.

Rounding mirrors `kernels.reference` (which mirrors the model): fp32 maths, with the same intermediate casts
to the activation dtype. Import only where triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _row_kernel(
    x_ptr, h_ptr, gate_ptr, w_ptr, scale_ptr, shift_ptr, idx_ptr, res_out_ptr, out_ptr,
    n_rows, inner, dim,
    x_so, x_si, h_so, h_si, res_so, res_si, out_so, out_si,
    gate_sr, gate_sc, scale_sr, scale_sc, shift_sr, shift_sc,
    eps,
    HAS_GATE: tl.constexpr, NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_MOD: tl.constexpr,
    HAS_INDEX: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # Rows are addressed in two levels, (outer, inner), so that a `(tokens, heads, head_dim)` view of a fused qkv
    # projection normalises without a copy; the modulation row is the outer (token) index.
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols < dim)[None, :]
    outer = (rows // inner).to(tl.int64)
    inr = (rows % inner).to(tl.int64)
    if HAS_INDEX:
        mod_row = tl.load(idx_ptr + outer, mask=row_ok, other=0).to(tl.int64)
    else:
        mod_row = outer

    x = tl.load(x_ptr + (outer * x_so + inr * x_si)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_GATE:
        # new residual = residual + round_h(h * gate), rounded to the residual's dtype: the model's
        # `vid + AdaSingle.gate(h)`.
        h = tl.load(h_ptr + (outer * h_so + inr * h_si)[:, None] + cols[None, :], mask=mask, other=0.0)
        g = tl.load(gate_ptr + (mod_row * gate_sr)[:, None] + cols[None, :] * gate_sc, mask=mask, other=0.0)
        gated = (h.to(tl.float32) * g.to(tl.float32)).to(h_ptr.dtype.element_ty).to(tl.float32)
        new_res = (x + gated).to(res_out_ptr.dtype.element_ty)
        tl.store(res_out_ptr + (outer * res_so + inr * res_si)[:, None] + cols[None, :], new_res, mask=mask)
        x = new_res.to(tl.float32)

    if NORM:
        mean_sq = tl.sum(x * x, axis=1) / dim
        y = x * tl.rsqrt(mean_sq + eps)[:, None]
        if HAS_WEIGHT:
            w = tl.load(w_ptr + cols, mask=cols < dim, other=0.0).to(tl.float32)
            y = y * w[None, :]
        # The model rounds the normalised row to the activation dtype before modulating it.
        if HAS_GATE:
            y = y.to(res_out_ptr.dtype.element_ty).to(tl.float32)
        else:
            y = y.to(x_ptr.dtype.element_ty).to(tl.float32)
        if HAS_MOD:
            sc = tl.load(scale_ptr + (mod_row * scale_sr)[:, None] + cols[None, :] * scale_sc, mask=mask, other=0.0)
            sh = tl.load(shift_ptr + (mod_row * shift_sr)[:, None] + cols[None, :] * shift_sc, mask=mask, other=0.0)
            y = y * sc.to(tl.float32) + sh.to(tl.float32)
            if HAS_GATE:
                y = y.to(res_out_ptr.dtype.element_ty).to(tl.float32)
            else:
                y = y.to(x_ptr.dtype.element_ty).to(tl.float32)
        tl.store(out_ptr + (outer * out_so + inr * out_si)[:, None] + cols[None, :], y.to(out_ptr.dtype.element_ty),
                 mask=mask)  # fmt: skip


def _row_layout(t: torch.Tensor) -> tuple[torch.Tensor, int, int, int, int]:
    """`t (..., D)` -> (t with a unit last stride, outer rows, inner rows, outer stride, inner stride)."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() > 3:
        t = t.reshape(-1, t.shape[-2], t.shape[-1])
    if t.dim() == 2:
        return t, t.shape[0], 1, t.stride(0), 0
    return t, t.shape[0], t.shape[1], t.stride(0), t.stride(1)


def _mod_layout(mod: torch.Tensor | None, outer: int, index: torch.Tensor | None, like: torch.Tensor):
    """A modulation vector as (tensor, row stride, col stride): rows broadcast (stride 0), per row, or indexed."""
    if mod is None:
        return like, 0, 0
    if mod.dim() == 1:
        mod = mod.unsqueeze(0)
    if index is None and mod.shape[0] == 1:
        return mod, 0, mod.stride(1)
    if index is None and mod.shape[0] != outer:
        raise ValueError(f"modulation has {mod.shape[0]} rows for {outer} tokens and no index")
    return mod, mod.stride(0), mod.stride(1)


def launch_config(dim: int, rows: int) -> tuple[int, int, int]:
    block_d = triton.next_power_of_2(dim)
    per_program = max(1, min(64, 4096 // block_d, triton.next_power_of_2(rows)))
    num_warps = 4 if block_d * per_program <= 2048 else 8 if block_d * per_program <= 8192 else 16
    return block_d, per_program, num_warps


def row_op(
    x: torch.Tensor,
    *,
    h: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    norm: bool = True,
    eps: float = 1e-5,
    weight: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Launch the row kernel. Returns (new residual if `h` is given, normalised output if `norm`)."""
    dim = x.shape[-1]
    shape = x.shape
    x, outer, inner, x_so, x_si = _row_layout(x)
    n_rows = outer * inner
    res_out = out = None
    h_so = h_si = res_so = res_si = out_so = out_si = 0
    if h is not None:
        h, _, _, h_so, h_si = _row_layout(h)
        res_out = torch.empty(shape, dtype=torch.promote_types(x.dtype, h.dtype), device=x.device)
        _, _, _, res_so, res_si = _row_layout(res_out)
    norm_dtype = res_out.dtype if res_out is not None else x.dtype
    if norm:
        out = torch.empty(shape, dtype=out_dtype or norm_dtype, device=x.device)
        _, _, _, out_so, out_si = _row_layout(out)
    if index is not None:
        index = index.contiguous()
    if weight is not None:
        weight = weight.contiguous()
    gate_t, gate_sr, gate_sc = _mod_layout(gate, outer, index, x)
    scale_t, scale_sr, scale_sc = _mod_layout(scale, outer, index, x)
    shift_t, shift_sr, shift_sc = _mod_layout(shift, outer, index, x)
    block_d, rows, num_warps = launch_config(dim, n_rows)
    # No FMA contraction: every product rounds to fp32 as in the op-by-op reference.
    _row_kernel[(triton.cdiv(n_rows, rows),)](
        x, h if h is not None else x, gate_t, weight if weight is not None else x, scale_t, shift_t,
        index if index is not None else x, res_out if res_out is not None else x, out if out is not None else x,
        n_rows, inner, dim,
        x_so, x_si, h_so, h_si, res_so, res_si, out_so, out_si,
        gate_sr, gate_sc, scale_sr, scale_sc, shift_sr, shift_sc,
        eps,
        HAS_GATE=h is not None, NORM=norm, HAS_WEIGHT=weight is not None, HAS_MOD=scale is not None,
        HAS_INDEX=index is not None, ROWS=rows, BLOCK_D=block_d, num_warps=num_warps, enable_fp_fusion=False,
    )  # fmt: skip
    return res_out, out
