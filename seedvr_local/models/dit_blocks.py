# Ported from ByteDance Seed's SeedVR (https://github.com/ByteDance-Seed/SeedVR, Apache-2.0),
# models/dit_v2 (3B) and models/dit (7B): the NaMMSR transformer block; rewritten for this project (see NOTICE).
"""The NaDiT transformer block (`NaMMSRTransformerBlock`, spec 2.7), shared by the 3B and 7B models."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from seedvr_local import kernels
from seedvr_local.models.dit_layers import MLP_TYPES, AdaSingle, MMPair
from seedvr_local.models.window_attention import TokenLayout, WindowAttention


class BlockModulation(NamedTuple):
    """A block's `(B, D)` fp32 modulation vectors, in the order of `AdaSingle.modulation`'s slots."""

    attn_shift: torch.Tensor
    attn_scale: torch.Tensor
    attn_gate: torch.Tensor
    mlp_shift: torch.Tensor
    mlp_scale: torch.Tensor
    mlp_gate: torch.Tensor


class MMSRBlock(nn.Module):
    """Video and text streams with their own residuals; they meet only inside the window attention.

    `text_passthrough` is the 3B last block: its text-side modulation and MLP are skipped (`vid_only`). The text
    keys/values it feeds to the attention are therefore unmodulated, which does change the video output.
    """

    def __init__(
        self,
        *,
        vid_dim: int,
        txt_dim: int,
        heads: int,
        head_dim: int,
        expand_ratio: int,
        norm_eps: float,
        qk_bias: bool,
        qk_norm: bool,
        mlp_type: str,
        window: tuple[int, int, int],
        window_method: str,
        rope: nn.Module | None,
        shared_proj: bool,
        shared_qk_norm: bool,
        shared_mlp: bool,
        shared_ada: bool,
        text_passthrough: bool = False,
    ):
        super().__init__()
        self.norm_eps = norm_eps
        self.text_passthrough = text_passthrough
        self.attn = WindowAttention(
            vid_dim=vid_dim,
            txt_dim=txt_dim,
            heads=heads,
            head_dim=head_dim,
            qk_bias=qk_bias,
            qk_norm=qk_norm,
            norm_eps=norm_eps,
            window=window,
            window_method=window_method,
            shared_proj=shared_proj,
            shared_qk_norm=shared_qk_norm,
            rope=rope,
        )
        mlp = MLP_TYPES[mlp_type]
        self.mlp = MMPair(lambda d: mlp(d, expand_ratio), vid_dim, txt_dim, shared_mlp, vid_only=text_passthrough)
        self.ada = MMPair(lambda d: AdaSingle(d), vid_dim, txt_dim, shared_ada, vid_only=text_passthrough)

    def forward(
        self, vid: torch.Tensor, txt: torch.Tensor, layout: TokenLayout, emb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`emb (2, 3, B, D)` fp32: the time embedding of each sample as `(layer, {shift, scale, gate}, B, D)`.

        The norms, modulations and gated residual adds go through `kernels`, which fuses each seam between two
        layers (gate, residual add, next norm, modulation) into one pass on the GPU.
        """
        ada_vid, ada_txt = self.ada.vid_branch, self.ada.txt_branch
        vid_mod = BlockModulation(*ada_vid.modulation(emb).flatten(0, 1))
        vid_rows, txt_rows = layout.sample_index("vid"), layout.sample_index("txt")
        # The layers run in the weights' dtype; the residual streams may be wider (fp32 under fp16 weights), and
        # the modulation offsets stay fp32 (NaDiT._keep_in_fp32_modules).
        norm = dict(eps=self.norm_eps, out_dtype=self.attn.proj_qkv.vid_branch.weight.dtype)

        x = kernels.rms_norm_modulate(vid, vid_mod.attn_scale, vid_mod.attn_shift, **norm, index=vid_rows)
        if ada_txt is None:
            y = kernels.rms_norm_modulate(txt, **norm)
        else:
            txt_mod = vid_mod if ada_txt is ada_vid else BlockModulation(*ada_txt.modulation(emb).flatten(0, 1))
            y = kernels.rms_norm_modulate(txt, txt_mod.attn_scale, txt_mod.attn_shift, **norm, index=txt_rows)
        x, y = self.attn(x, y, layout)

        vid, x = kernels.gated_residual_rms_norm_modulate(
            vid, x, vid_mod.attn_gate, vid_mod.mlp_scale, vid_mod.mlp_shift, **norm, index=vid_rows
        )
        vid = kernels.gated_residual(vid, self.mlp.vid_branch(x), vid_mod.mlp_gate, index=vid_rows)
        if self.text_passthrough:
            # The official block adds the untouched text to itself here; nothing reads it afterwards.
            txt = txt + y
            return vid, txt + txt
        txt, y = kernels.gated_residual_rms_norm_modulate(
            txt, y, txt_mod.attn_gate, txt_mod.mlp_scale, txt_mod.mlp_shift, **norm, index=txt_rows
        )
        return vid, kernels.gated_residual(txt, self.mlp.txt_branch(y), txt_mod.mlp_gate, index=txt_rows)
