"""The NaDiT transformer block (`NaMMSRTransformerBlock`, spec 2.7), shared by the 3B and 7B models."""

from __future__ import annotations

import torch
from torch import nn

import kernels
from seedvr_local.models.dit_layers import MLP_TYPES, AdaSingle, MMPair
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
        """`emb (B, 6D)`: the time embedding of each sample, read as `(d, layer, {shift, scale, gate})`.

        The norms, modulations and gated residual adds go through `kernels`, which fuses each seam between two
        layers (gate, residual add, next norm, modulation) into one pass on the GPU.
        """
        attn_emb, mlp_emb = emb.unflatten(-1, (-1, 2, 3)).unbind(-2)
        ada_vid, ada_txt = self.ada.vid_branch, self.ada.txt_branch
        vid_rows, txt_rows = layout.sample_index("vid"), layout.sample_index("txt")
        # The layers run in the weights' dtype; the residual streams may be wider (fp32 under fp16 weights).
        norm = dict(eps=self.norm_eps, out_dtype=ada_vid.attn_shift.dtype)

        x = kernels.rms_norm_modulate(
            vid, ada_vid.vector(attn_emb, "attn", "scale"), ada_vid.vector(attn_emb, "attn", "shift"),
            **norm, index=vid_rows,
        )  # fmt: skip
        if ada_txt is None:
            y = kernels.rms_norm_modulate(txt, **norm)
        else:
            y = kernels.rms_norm_modulate(
                txt, ada_txt.vector(attn_emb, "attn", "scale"), ada_txt.vector(attn_emb, "attn", "shift"),
                **norm, index=txt_rows,
            )  # fmt: skip
        x, y = self.attn(x, y, layout)

        vid, x = kernels.gated_residual_rms_norm_modulate(
            vid, x, ada_vid.vector(attn_emb, "attn", "gate"),
            ada_vid.vector(mlp_emb, "mlp", "scale"), ada_vid.vector(mlp_emb, "mlp", "shift"),
            **norm, index=vid_rows,
        )  # fmt: skip
        vid = kernels.gated_residual(vid, self.mlp.vid_branch(x), ada_vid.vector(mlp_emb, "mlp", "gate"), index=vid_rows)
        if self.text_passthrough:
            # The official block adds the untouched text to itself here; nothing reads it afterwards.
            txt = txt + y
            return vid, txt + txt
        txt, y = kernels.gated_residual_rms_norm_modulate(
            txt, y, ada_txt.vector(attn_emb, "attn", "gate"),
            ada_txt.vector(mlp_emb, "mlp", "scale"), ada_txt.vector(mlp_emb, "mlp", "shift"),
            **norm, index=txt_rows,
        )  # fmt: skip
        return vid, kernels.gated_residual(txt, self.mlp.txt_branch(y), ada_txt.vector(mlp_emb, "mlp", "gate"), index=txt_rows)
