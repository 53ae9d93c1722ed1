# Ported from ByteDance Seed's SeedVR (https://github.com/ByteDance-Seed/SeedVR, Apache-2.0),
# models/dit_v2 (3B) and models/dit (7B): the window attention; rewritten for this project (see NOTICE).
"""Window attention over video + text tokens (spec 2.9), and the per-forward token layout it runs on.

Every window of every sample is its own attention sequence: the window's video tokens followed by all text tokens
of that sample. Video tokens see only their window plus the text; samples never see each other. Each text token
is evaluated once per window of its sample and its outputs are averaged over those windows.

No loop over windows: on CUDA in half precision every window of a layer is packed into one token list and run
through one variable-length flash attention call (flash-attn's or torch's varlen kernel); elsewhere windows of
equal shape are gathered into one `(n, S, heads, head_dim)` batch per shape for `scaled_dot_product_attention`.
`ATTENTION_BACKENDS` is the one registry of these paths; all give the same numbers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from seedvr_local import devices, kernels
from seedvr_local.models.dit_layers import MMPair, RMSNorm
from seedvr_local.models.windows import window_boxes

Grid = tuple[int, int, int]
QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # q, k, v of one token stream: (tokens, heads, head_dim)


@dataclass
class WindowGroup:
    """All windows with one shape and one text length, across the samples of a batch (sample order kept)."""

    shape: Grid
    txt_len: int
    vid_idx: torch.Tensor  # (n, window tokens): rows of the flat video tokens
    txt_idx: torch.Tensor  # (n, txt_len): rows of the flat text tokens of each window's sample
    # (first text row, first window in this group, window count) per sample: for the text average.
    runs: list[tuple[int, int, int]]
    rope_tables: dict = field(default_factory=dict)


@dataclass
class WindowPlan:
    groups: list[WindowGroup]
    txt_windows: torch.Tensor  # (text rows, 1, 1) fp32: how many windows each text row is averaged over


class TokenLayout:
    """Where each sample's tokens sit in the flat video/text token lists of one forward, and the attention
    backend (a key of `ATTENTION_BACKENDS`, resolved by the model) that runs on them. `periodic`: every sample's
    frame is one period of a tileable image, its windows laid out on a torus (`windows.window_boxes`).

    Built once per forward and shared by all blocks: it memoises the window plans of each layout method and the
    RoPE tables, so they are computed once per forward and never per block.
    """

    def __init__(
        self, grids: list[Grid], txt_lens: list[int], device: torch.device, attention: str, periodic: bool = False
    ):
        self.grids, self.txt_lens, self.device, self.attention = grids, txt_lens, device, attention
        self.periodic = periodic
        self.vid_lens = [t * h * w for t, h, w in grids]
        self.vid_offsets = [sum(self.vid_lens[:i]) for i in range(len(grids))]
        self.txt_offsets = [sum(txt_lens[:i]) for i in range(len(grids))]
        self._cache: dict = {}

    def sample_index(self, stream: str) -> torch.Tensor | None:
        """The sample of each video (`stream="vid"`) or text token, `(tokens,)`; None for a single sample,
        whose per-sample vectors broadcast over all tokens as they are."""
        if len(self.grids) == 1:
            return None
        lengths = self.vid_lens if stream == "vid" else self.txt_lens
        return self.cached(
            ("sample_index", stream),
            lambda: torch.repeat_interleave(torch.arange(len(lengths), device=self.device),
                                            torch.tensor(lengths, device=self.device)),
        )  # fmt: skip

    def cached(self, key, compute: Callable):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def text_positions(self) -> torch.Tensor:
        """Each text token's index within its own sample's text, `(text rows,)`."""
        return torch.cat([torch.arange(n, device=self.device) for n in self.txt_lens])

    def grouped_windows(self, method: str, num_windows: tuple[int, int, int]) -> WindowPlan:
        """The windows of a layout method grouped by shape (the SDPA layout)."""
        key = ("grouped", method, tuple(num_windows))
        return self.cached(key, lambda: self._build_plan(method, tuple(num_windows)))

    def packed_windows(self, method: str, num_windows: tuple[int, int, int]) -> PackedWindows:
        """The windows of a layout method packed one after the other (the varlen layout)."""
        key = ("packed", method, tuple(num_windows))
        return self.cached(key, lambda: self._build_packed(method, tuple(num_windows)))

    def _window_rows(self, method: str, num_windows: tuple[int, int, int]):
        """Every window in the official order: (sample, window shape, rows of its video tokens). The rows of a
        window are in raster order within the window, which on a torus may run past the grid into its other side:
        its positions (and RoPE angles) are those of a window that does not wrap."""
        for sample, grid in enumerate(self.grids):
            _, h, w = grid
            for (t0, t1), (h0, h1), (w0, w1) in window_boxes(grid, num_windows, method, self.periodic):
                rows = (torch.arange(t0, t1)[:, None, None] * h + torch.arange(h0, h1)[None, :, None] % h) * w
                rows = (rows + torch.arange(w0, w1) % w).flatten() + self.vid_offsets[sample]
                yield sample, (t1 - t0, h1 - h0, w1 - w0), rows

    def _build_plan(self, method: str, num_windows: tuple[int, int, int]) -> WindowPlan:
        members: dict[tuple[Grid, int], list[tuple[int, torch.Tensor]]] = {}
        counts = [0] * len(self.grids)
        for sample, shape, rows in self._window_rows(method, num_windows):
            counts[sample] += 1
            members.setdefault((shape, self.txt_lens[sample]), []).append((sample, rows))

        groups = []
        for (shape, txt_len), windows in members.items():
            samples = [s for s, _ in windows]
            runs = [(self.txt_offsets[s], samples.index(s), samples.count(s)) for s in dict.fromkeys(samples)]
            txt_idx = torch.stack([torch.arange(txt_len) + self.txt_offsets[s] for s in samples])
            vid_idx = torch.stack([rows for _, rows in windows])
            groups.append(WindowGroup(shape, txt_len, vid_idx.to(self.device), txt_idx.to(self.device), runs))
        txt_windows = torch.cat([torch.full((n,), float(c)) for n, c in zip(self.txt_lens, counts)])
        return WindowPlan(groups, txt_windows.to(self.device)[:, None, None])

    def _build_packed(self, method: str, num_windows: tuple[int, int, int]) -> PackedWindows:
        vid_total = sum(self.vid_lens)
        rows, windows, bounds = [], [], [0]
        counts = [0] * len(self.grids)
        for sample, shape, vid_rows in self._window_rows(method, num_windows):
            txt_len = self.txt_lens[sample]
            rows.append(vid_rows)
            rows.append(torch.arange(txt_len) + (vid_total + self.txt_offsets[sample]))
            windows.append((shape, txt_len))
            bounds.append(bounds[-1] + len(vid_rows) + txt_len)
            counts[sample] += 1
        rows = torch.cat(rows)
        # Each video token sits in exactly one window. The text copies, in packed order, run sample by sample and
        # window by window, so each sample's copies reshape to (its windows, its text) for the average.
        is_video = rows < vid_total
        vid_pos = torch.empty(vid_total, dtype=torch.int64)
        vid_pos[rows[is_video]] = torch.nonzero(is_video).flatten()
        return PackedWindows(
            rows=rows.to(self.device),
            cu_seqlens=torch.tensor(bounds, dtype=torch.int32, device=self.device),
            bounds=bounds,
            max_seqlen=max(b - a for a, b in zip(bounds, bounds[1:])),
            vid_pos=vid_pos.to(self.device),
            txt_pos=torch.nonzero(~is_video).flatten().to(self.device),
            text_copies=list(zip(counts, self.txt_lens)),
            windows=windows,
        )


@dataclass
class PackedWindows:
    """Every window of a layer as one sequence of a packed token list: the varlen attention layout.

    Packed rows index the flat tokens `cat(video tokens, text tokens)`: window after window (the official order,
    sample by sample), each window's video tokens followed by its sample's text.
    """

    rows: torch.Tensor  # (packed,)
    cu_seqlens: torch.Tensor  # (windows + 1,) int32: where each window's sequence starts
    bounds: list[int]  # the same, on the host
    max_seqlen: int
    vid_pos: torch.Tensor  # (video tokens,): the packed row of each video token
    txt_pos: torch.Tensor  # the packed rows of the text copies, in packed order
    text_copies: list[tuple[int, int]]  # (windows, text length) of each sample
    windows: list[tuple[Grid, int]]  # (shape, text length) of each window
    rope_tables: dict = field(default_factory=dict)

    def rope_table(self, rope: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The `(cos, sin)` angles of every packed row: window-local positions for video; for text its own
        positions (3B) or a rotation by zero, which is exact (7B)."""
        if rope.cache_key not in self.rope_tables:
            device = self.rows.device
            video = {key: rope.video_table(*key, device) for key in dict.fromkeys(self.windows)}
            pairs = next(iter(video.values()))[0].shape[-1]
            text = {
                n: rope.text_table(torch.arange(n, device=device)) if rope.rotates_text
                else (torch.ones(n, pairs, device=device), torch.zeros(n, pairs, device=device))
                for n in dict.fromkeys(n for _, n in self.windows)
            }  # fmt: skip
            tables = [table for key in self.windows for table in (video[key], text[key[1]])]
            self.rope_tables[rope.cache_key] = tuple(torch.cat(parts) for parts in zip(*tables))
        return self.rope_tables[rope.cache_key]

    def average_text(self, out: torch.Tensor) -> torch.Tensor:
        """The text rows of packed `out`, averaged in fp32 over the windows of their sample: `(text rows, ...)`."""
        copies = out[self.txt_pos]
        averages, start = [], 0
        for windows, txt_len in self.text_copies:
            part = copies[start : start + windows * txt_len].unflatten(0, (windows, txt_len))
            averages.append(part.mean(0, dtype=torch.float32))
            start += windows * txt_len
        return (averages[0] if len(averages) == 1 else torch.cat(averages)).to(out.dtype)


@functools.cache
def _flash_attn_varlen() -> Callable | None:
    try:
        from flash_attn import flash_attn_varlen_func
    except (ImportError, OSError):
        return None
    return flash_attn_varlen_func


@functools.cache
def _torch_varlen() -> Callable | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One `scaled_dot_product_attention` call over all windows of a group `(n, S, heads, d)` (torch picks its
    fastest kernel)."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def flash_attn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: PackedWindows) -> torch.Tensor:
    cu, longest = packed.cu_seqlens, packed.max_seqlen
    return _flash_attn_varlen()(q, k, v, cu, cu, longest, longest)


def torch_varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: PackedWindows) -> torch.Tensor:
    cu, longest = packed.cu_seqlens, packed.max_seqlen
    return _torch_varlen()(q, k, v, cu, cu, longest, longest)


@dataclass(frozen=True)
class AttentionBackend:
    """One exact way to run a layer's window attention; they differ only in speed.

    `layout`: "packed" (every window of the layer in one varlen call: `kernel(q, k, v, packed)` on
    `(packed tokens, heads, d)`), "grouped" (one call per window shape: `kernel(q, k, v)` on `(n, S, heads, d)`)
    or "per_window" (gather, rotate and attend one window at a time, with the grouped kernel on one window).
    """

    layout: str
    kernel: Callable[..., torch.Tensor]


#: Every attention backend, in the order `auto` tries them. `per_window` is the naive loop over windows that a
#: direct port runs: the baseline the others are measured and checked against.
ATTENTION_BACKENDS: dict[str, AttentionBackend] = {
    "flash_attn": AttentionBackend("packed", flash_attn_attention),
    "torch_varlen": AttentionBackend("packed", torch_varlen_attention),
    "sdpa": AttentionBackend("grouped", sdpa_attention),
    "per_window": AttentionBackend("per_window", sdpa_attention),
}


def attention_backend_available(name: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether backend `name` can run a model on `device` with weights of `dtype` and heads of `head_dim`."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; known: auto, {', '.join(ATTENTION_BACKENDS)}")
    if ATTENTION_BACKENDS[name].layout != "packed":
        return True
    flash_ok = (
        device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0 and head_dim <= 256
        and devices.cuda_capability(device) >= devices.AMPERE  # both varlen kernels are flash attention 2: sm80+
    )  # fmt: skip
    library = _flash_attn_varlen if name == "flash_attn" else _torch_varlen
    return flash_ok and library() is not None


def resolve_attention_backend(
    name: str, device: torch.device, dtype: torch.dtype, head_dim: int
) -> tuple[str, str]:
    """`name` -> (backend, why): `auto` picks the first available of `ATTENTION_BACKENDS`; a named backend must
    be available. Resolved once per model (see `NaDiT.set_window_attention_backend`), never per layer."""
    if name == "auto":
        backend = next(b for b in ATTENTION_BACKENDS if attention_backend_available(b, device, dtype, head_dim))
        return backend, f"auto: the fastest for {dtype} on {device.type}"
    if not attention_backend_available(name, device, dtype, head_dim):
        raise ValueError(f"attention backend {name!r} cannot run {dtype} on {device}")
    return name, "asked for"


class WindowAttention(nn.Module):
    """The official `NaSwinAttention`: qkv projections, per-head RMS q/k norms, window-local RoPE, window
    attention, output projections. Key names follow the official checkpoints."""

    def __init__(
        self,
        *,
        vid_dim: int,
        txt_dim: int,
        heads: int,
        head_dim: int,
        qk_bias: bool,
        qk_norm: bool,
        norm_eps: float,
        window: tuple[int, int, int],
        window_method: str,
        shared_proj: bool,
        shared_qk_norm: bool,
        rope: nn.Module | None,
    ):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.window, self.window_method = tuple(window), window_method
        inner = heads * head_dim
        self.proj_qkv = MMPair(lambda d: nn.Linear(d, 3 * inner, bias=qk_bias), vid_dim, txt_dim, shared_proj)
        self.proj_out = MMPair(lambda d: nn.Linear(inner, d), vid_dim, txt_dim, shared_proj)
        make_norm = (lambda d: RMSNorm(head_dim, norm_eps)) if qk_norm else (lambda d: nn.Identity())
        self.norm_q = MMPair(make_norm, vid_dim, txt_dim, shared_qk_norm)
        self.norm_k = MMPair(make_norm, vid_dim, txt_dim, shared_qk_norm)
        self.rope = rope

    def forward(self, vid: torch.Tensor, txt: torch.Tensor, layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor]:
        vid_qkv, txt_qkv = self.proj_qkv(vid, txt)
        # "(o h d)": q, k, v blocks of heads * head_dim each.
        vid_q, vid_k, vid_v = vid_qkv.unflatten(-1, (3, self.heads, self.head_dim)).unbind(1)
        txt_q, txt_k, txt_v = txt_qkv.unflatten(-1, (3, self.heads, self.head_dim)).unbind(1)
        vid_q, txt_q = self.norm_q(vid_q, txt_q)
        vid_k, txt_k = self.norm_k(vid_k, txt_k)
        backend = ATTENTION_BACKENDS[layout.attention]
        attend = {"packed": self._attend_packed, "grouped": self._attend_grouped,
                  "per_window": self._attend_per_window}[backend.layout]  # fmt: skip
        vid_out, txt_out = attend((vid_q, vid_k, vid_v), (txt_q, txt_k, txt_v), layout, backend.kernel)
        return self.proj_out(vid_out.flatten(1), txt_out.flatten(1))

    def _attend_packed(
        self, vid_qkv: QKV, txt_qkv: QKV, layout: TokenLayout, kernel: Callable[..., torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All windows in one call: a dozen launches per layer whatever the number of windows."""
        packed = layout.packed_windows(self.window_method, self.window)
        q, k, v = (torch.cat(pair) for pair in zip(vid_qkv, txt_qkv))
        if self.rope is None:
            q, k = q[packed.rows], k[packed.rows]
        else:  # the window gather is fused into the rotation
            table = packed.rope_table(self.rope)
            q = kernels.rotate_pairs(q, *table, index=packed.rows)
            k = kernels.rotate_pairs(k, *table, index=packed.rows)
        out = kernel(q, k, v[packed.rows], packed)
        return out[packed.vid_pos], packed.average_text(out)

    def _attend_per_window(
        self, vid_qkv: QKV, txt_qkv: QKV, layout: TokenLayout, kernel: Callable[..., torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather, rotate and attend one window at a time."""
        packed = layout.packed_windows(self.window_method, self.window)
        q_all, k_all, v_all = (torch.cat(pair) for pair in zip(vid_qkv, txt_qkv))
        out = q_all.new_empty((len(packed.rows), *q_all.shape[1:]))
        table = packed.rope_table(self.rope) if self.rope is not None else None
        for a, b in zip(packed.bounds, packed.bounds[1:]):
            rows = packed.rows[a:b]
            q, k = q_all[rows], k_all[rows]
            if table is not None:
                cos, sin = table[0][a:b], table[1][a:b]
                q, k = kernels.rotate_pairs(q, cos, sin), kernels.rotate_pairs(k, cos, sin)
            out[a:b] = kernel(q[None], k[None], v_all[rows][None])[0]
        return out[packed.vid_pos], packed.average_text(out)

    def _attend_grouped(
        self, vid_qkv: QKV, txt_qkv: QKV, layout: TokenLayout, kernel: Callable[..., torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One call per window shape (a handful per layer)."""
        (vid_q, vid_k, vid_v), (txt_q, txt_k, txt_v) = vid_qkv, txt_qkv
        rope = self.rope
        if rope is not None and rope.rotates_text:
            table = layout.cached(("txt", rope.cache_key), lambda: rope.text_table(layout.text_positions()))
            txt_q, txt_k = kernels.rotate_pairs(txt_q, *table), kernels.rotate_pairs(txt_k, *table)

        plan = layout.grouped_windows(self.window_method, self.window)
        vid_out = torch.empty_like(vid_v)
        txt_sum = torch.zeros(txt_v.shape, dtype=torch.float32, device=txt_v.device)
        for group in plan.groups:
            if rope is None:
                q, k = vid_q[group.vid_idx], vid_k[group.vid_idx]
            else:
                if rope.cache_key not in group.rope_tables:
                    group.rope_tables[rope.cache_key] = rope.video_table(group.shape, group.txt_len, vid_q.device)
                table = group.rope_tables[rope.cache_key]
                # The window gather is fused into the rotation.
                q = kernels.rotate_pairs(vid_q, *table, index=group.vid_idx)
                k = kernels.rotate_pairs(vid_k, *table, index=group.vid_idx)
            out = kernel(
                torch.cat((q, txt_q[group.txt_idx]), dim=1),
                torch.cat((k, txt_k[group.txt_idx]), dim=1),
                torch.cat((vid_v[group.vid_idx], txt_v[group.txt_idx]), dim=1),
            )
            window_len = group.vid_idx.shape[1]
            vid_out.index_copy_(0, group.vid_idx.flatten(), out[:, :window_len].flatten(0, 1))
            txt_part = out[:, window_len:]
            for first_row, first, count in group.runs:
                txt_sum[first_row : first_row + group.txt_len] += txt_part[first : first + count].float().sum(0)
        return vid_out, (txt_sum / plan.txt_windows).to(txt_v.dtype)
