"""Window attention over video + text tokens (spec 2.9), and the per-forward token layout it runs on.

Every window of every sample is its own attention sequence: the window's video tokens followed by all text tokens
of that sample. Video tokens see only their window plus the text; samples never see each other. Each text token
is evaluated once per window of its sample and its outputs are averaged over those windows.

Windows of equal shape (and equal text length) are gathered into one `(n, S, heads, head_dim)` batch and run
through one attention call, so the cost is a handful of kernel launches per layer instead of a loop over windows.
That call goes through the fastest exact path available (`ATTENTION_BACKENDS`): flash-attn's or torch's varlen
kernels on CUDA in half precision, else `scaled_dot_product_attention`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import kernels

from seedvr_local.models.dit_layers import MMPair, RMSNorm
from seedvr_local.models.windows import window_boxes

Grid = tuple[int, int, int]


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
    """Where each sample's tokens sit in the flat video/text token lists of one forward.

    Built once per forward and shared by all blocks: it memoises the window plans of each layout method and the
    RoPE tables, so they are computed once per forward and never per block.
    """

    def __init__(self, grids: list[Grid], txt_lens: list[int], device: torch.device):
        self.grids, self.txt_lens, self.device = grids, txt_lens, device
        self.vid_lens = [t * h * w for t, h, w in grids]
        self.vid_offsets = [sum(self.vid_lens[:i]) for i in range(len(grids))]
        self.txt_offsets = [sum(txt_lens[:i]) for i in range(len(grids))]
        self._plans: dict[tuple, WindowPlan] = {}
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

    def windows(self, method: str, num_windows: tuple[int, int, int]) -> WindowPlan:
        key = (method, tuple(num_windows))
        if key not in self._plans:
            self._plans[key] = self._build_plan(method, tuple(num_windows))
        return self._plans[key]

    def _build_plan(self, method: str, num_windows: tuple[int, int, int]) -> WindowPlan:
        members: dict[tuple[Grid, int], list[tuple[int, torch.Tensor]]] = {}
        counts = []
        for sample, grid in enumerate(self.grids):
            boxes = window_boxes(grid, num_windows, method)
            counts.append(len(boxes))
            _, h, w = grid
            for (t0, t1), (h0, h1), (w0, w1) in boxes:
                rows = (torch.arange(t0, t1)[:, None, None] * h + torch.arange(h0, h1)[None, :, None]) * w
                rows = (rows + torch.arange(w0, w1)).flatten() + self.vid_offsets[sample]
                key = ((t1 - t0, h1 - h0, w1 - w0), self.txt_lens[sample])
                members.setdefault(key, []).append((sample, rows))

        groups = []
        for (shape, txt_len), windows in members.items():
            samples = [s for s, _ in windows]
            runs = [(self.txt_offsets[s], samples.index(s), samples.count(s)) for s in dict.fromkeys(samples)]
            txt_idx = torch.stack([torch.arange(txt_len) + self.txt_offsets[s] for s in samples])
            vid_idx = torch.stack([rows for _, rows in windows])
            groups.append(WindowGroup(shape, txt_len, vid_idx.to(self.device), txt_idx.to(self.device), runs))
        txt_windows = torch.cat([torch.full((n,), float(c)) for n, c in zip(self.txt_lens, counts)])
        return WindowPlan(groups, txt_windows.to(self.device)[:, None, None])


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


def _packed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, varlen: Callable) -> torch.Tensor:
    # Every window of a group is one sequence of the same length in a packed (tokens, heads, d) batch.
    n, seq = q.shape[:2]
    cu_seqlens = torch.arange(0, (n + 1) * seq, seq, dtype=torch.int32, device=q.device)
    out = varlen(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu_seqlens, cu_seqlens, seq, seq)
    return out.unflatten(0, (n, seq))


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One `scaled_dot_product_attention` call over all windows of a group (torch picks its fastest kernel)."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def flash_attn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _packed(q, k, v, _flash_attn_varlen())


def torch_varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _packed(q, k, v, _torch_varlen())


def per_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One attention call per window, as a direct port of the official loop would do. The baseline that the
    grouped paths are measured and checked against."""
    return torch.cat([sdpa_attention(q[i : i + 1], k[i : i + 1], v[i : i + 1]) for i in range(q.shape[0])])


#: Exact attention paths over a group of equal-length windows `(n, S, heads, d)` -> `(n, S, heads, d)`.
ATTENTION_BACKENDS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "flash_attn": flash_attn_attention,
    "torch_varlen": torch_varlen_attention,
    "sdpa": sdpa_attention,
    "per_window": per_window_attention,
}


def attention_backend_available(name: str, q: torch.Tensor) -> bool:
    """Whether backend `name` can run on tensors like `q` (device, dtype, head size)."""
    if name in ("sdpa", "per_window"):
        return True
    flash_ok = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256
    if name == "flash_attn":
        return flash_ok and _flash_attn_varlen() is not None
    if name == "torch_varlen":
        return flash_ok and _torch_varlen() is not None
    raise ValueError(f"unknown attention backend {name!r}; known: auto, {', '.join(ATTENTION_BACKENDS)}")


def resolve_attention_backend(name: str, q: torch.Tensor) -> str:
    """`auto` -> the first available of flash_attn, torch_varlen, sdpa; a named backend must be available."""
    if name == "auto":
        return next(b for b in ATTENTION_BACKENDS if attention_backend_available(b, q))
    if not attention_backend_available(name, q):
        raise ValueError(f"attention backend {name!r} cannot run {q.dtype} on {q.device}")
    return name


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Full softmax attention per sequence, scale 1/sqrt(head_dim): `(n, S, heads, d)` -> `(n, S, heads, d)`."""
    return ATTENTION_BACKENDS[resolve_attention_backend(backend, q)](q, k, v)


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
        self.attention_backend = "auto"  # see ATTENTION_BACKENDS; set for a whole model by NaDiT

    def forward(self, vid: torch.Tensor, txt: torch.Tensor, layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor]:
        vid_qkv, txt_qkv = self.proj_qkv(vid, txt)
        # "(o h d)": q, k, v blocks of heads * head_dim each.
        vid_q, vid_k, vid_v = vid_qkv.unflatten(-1, (3, self.heads, self.head_dim)).unbind(1)
        txt_q, txt_k, txt_v = txt_qkv.unflatten(-1, (3, self.heads, self.head_dim)).unbind(1)
        vid_q, txt_q = self.norm_q(vid_q, txt_q)
        vid_k, txt_k = self.norm_k(vid_k, txt_k)
        rope = self.rope
        if rope is not None and rope.rotates_text:
            table = layout.cached(("txt", rope.cache_key), lambda: rope.text_table(layout.text_positions()))
            txt_q, txt_k = kernels.rotate_pairs(txt_q, *table), kernels.rotate_pairs(txt_k, *table)

        plan = layout.windows(self.window_method, self.window)
        vid_out = torch.empty_like(vid_v)
        txt_sum = torch.zeros(txt_v.shape, dtype=torch.float32, device=txt_v.device)
        for group in plan.groups:
            if rope is None:
                q, k = vid_q[group.vid_idx], vid_k[group.vid_idx]
            else:
                if rope.cache_key not in group.rope_tables:
                    group.rope_tables[rope.cache_key] = rope.video_table(group.shape, group.txt_len, vid.device)
                table = group.rope_tables[rope.cache_key]
                # The window gather is fused into the rotation.
                q = kernels.rotate_pairs(vid_q, *table, index=group.vid_idx)
                k = kernels.rotate_pairs(vid_k, *table, index=group.vid_idx)
            out = attend(
                torch.cat((q, txt_q[group.txt_idx]), dim=1),
                torch.cat((k, txt_k[group.txt_idx]), dim=1),
                torch.cat((vid_v[group.vid_idx], txt_v[group.txt_idx]), dim=1),
                self.attention_backend,
            )
            window_len = group.vid_idx.shape[1]
            vid_out.index_copy_(0, group.vid_idx.flatten(), out[:, :window_len].flatten(0, 1))
            txt_part = out[:, window_len:]
            for first_row, first, count in group.runs:
                txt_sum[first_row : first_row + group.txt_len] += txt_part[first : first + count].float().sum(0)
        txt_out = (txt_sum / plan.txt_windows).to(txt_v.dtype)
        return self.proj_out(vid_out.flatten(1), txt_out.flatten(1))
