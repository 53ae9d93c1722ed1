"""The NaDiT transformer block (`NaMMSRTransformerBlock`, spec 2.7), shared by the 3B and 7B models."""

from __future__ import annotations

import torch
from torch import nn

from seedvr_local.models.dit_layers import MLP_TYPES, AdaSingle, MMPair, rms_norm
from seedvr_local.models.window_attention import TokenLayout, WindowAttention


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
        """`emb (B, 6D)`: the time embedding of each sample, read as `(d, layer, {shift, scale, gate})`."""
        attn_emb, mlp_emb = emb.unflatten(-1, (-1, 2, 3)).unbind(-2)
        ada_vid, ada_txt = self.ada.vid_branch, self.ada.txt_branch
        expand_vid, expand_txt = layout.expand_vid, layout.expand_txt

        x = ada_vid.modulate(rms_norm(vid, None, self.norm_eps), attn_emb, "attn", expand_vid)
        y = rms_norm(txt, None, self.norm_eps)
        if ada_txt is not None:
            y = ada_txt.modulate(y, attn_emb, "attn", expand_txt)
        x, y = self.attn(x, y, layout)
        x = ada_vid.gate(x, attn_emb, "attn", expand_vid)
        if ada_txt is not None:
            y = ada_txt.gate(y, attn_emb, "attn", expand_txt)
        vid, txt = vid + x, txt + y

        x = ada_vid.modulate(rms_norm(vid, None, self.norm_eps), mlp_emb, "mlp", expand_vid)
        vid = vid + ada_vid.gate(self.mlp.vid_branch(x), mlp_emb, "mlp", expand_vid)
        if self.text_passthrough:
            # The official block adds the untouched text to itself here; nothing reads it afterwards.
            return vid, txt + txt
        y = ada_txt.modulate(rms_norm(txt, None, self.norm_eps), mlp_emb, "mlp", expand_txt)
        return vid, txt + ada_txt.gate(self.mlp.txt_branch(y), mlp_emb, "mlp", expand_txt)
