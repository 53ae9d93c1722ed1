# Ported from ByteDance Seed's SeedVR (https://github.com/ByteDance-Seed/SeedVR, Apache-2.0),
# models/dit_v2 (3B) and models/dit (7B): norms, MM modules, AdaSingle, MLPs, embeddings; rewritten here (see NOTICE).
"""Building blocks of the NaDiT: norms, the video/text module pair, AdaSingle, MLPs, time and patch embeddings.

Precision rule for low-precision weights (bf16/fp16): statistics, sinusoids and modulation sums are computed in
fp32 and the result is cast back to the activation dtype once. In fp32 this is the official maths op for op.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from seedvr_local import kernels

def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """apex `FusedRMSNorm` maths: `x * rsqrt(mean(x^2) + eps) [* weight]` over the last dim, in fp32."""
    return kernels.rms_norm(x, weight, eps)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class MMPair(nn.Module):
    """The official `MMModule`: a module per token stream (`.vid`, `.txt`), one shared module (`.all`), or a
    video-only module that lets the text stream pass through untouched (the 3B last block)."""

    def __init__(
        self, make: Callable[[int], nn.Module], vid_dim: int, txt_dim: int, shared: bool, vid_only: bool = False
    ):
        super().__init__()
        self.shared, self.vid_only = shared, vid_only
        if shared:
            if vid_dim != txt_dim:
                raise ValueError(f"shared video/text weights need vid_dim == txt_dim, got {vid_dim} and {txt_dim}")
            self.all = make(vid_dim)
        else:
            self.vid = make(vid_dim)
            self.txt = None if vid_only else make(txt_dim)

    @property
    def vid_branch(self) -> nn.Module:
        return self.all if self.shared else self.vid

    @property
    def txt_branch(self) -> nn.Module | None:
        """The text module, or None when the text stream is passed through."""
        if self.vid_only:
            return None
        return self.all if self.shared else self.txt

    def forward(self, vid: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        txt_branch = self.txt_branch
        return self.vid_branch(vid), (txt if txt_branch is None else txt_branch(txt))


class AdaSingle(nn.Module):
    """Adaptive modulation from the shared time embedding plus learned per-layer offsets (spec 2.6).

    The time embedding of a sample is read as `(d, layer, {shift, scale, gate})` ("b (d l g)", interleaved);
    `NaDiT` rearranges it once per forward to `(layer, kind, B, D)` in fp32, and each module adds its offsets to
    the slots it owns. The "+1" of the scale lives in the `_scale` parameter.
    """

    def __init__(self, dim: int, layers: Sequence[str] = ("attn", "mlp"), modes: Sequence[str] = ("in", "out")):
        super().__init__()
        self.layers = tuple(layers)
        self.kinds = (("shift", "scale") if "in" in modes else ()) + (("gate",) if "out" in modes else ())
        for layer in self.layers:
            if "in" in modes:
                setattr(self, f"{layer}_shift", nn.Parameter(torch.zeros(dim)))
                setattr(self, f"{layer}_scale", nn.Parameter(torch.ones(dim)))
            if "out" in modes:
                setattr(self, f"{layer}_gate", nn.Parameter(torch.zeros(dim)))

    def modulation(self, emb: torch.Tensor) -> torch.Tensor:
        """`emb (layers, kinds, B, D)` fp32, this module's slots of the time embedding -> the summed fp32
        modulation of the same shape: `h * scale + shift` (mode "in"), `h * gate` (mode "out").

        Two launches for all of a block's vectors, not two per vector: they add up to a thousand per forward.
        """
        offsets = torch.stack([getattr(self, f"{layer}_{kind}") for layer in self.layers for kind in self.kinds])
        # fp32 + low-precision offsets promotes to fp32: the same sum as upcasting the offsets first.
        return emb + offsets.view(len(self.layers), len(self.kinds), 1, -1)


def swiglu_hidden_dim(dim: int, expand_ratio: int, multiple_of: int = 256) -> int:
    hidden = int(2 * dim * expand_ratio / 3)
    return multiple_of * -(-hidden // multiple_of)


class SwiGLUMLP(nn.Module):
    """3B MLP: `proj_out(silu(proj_in_gate(x)) * proj_in(x))`, no biases."""

    def __init__(self, dim: int, expand_ratio: int):
        super().__init__()
        hidden = swiglu_hidden_dim(dim, expand_ratio)
        # Registration order = the official state_dict order.
        self.proj_in_gate = nn.Linear(dim, hidden, bias=False)
        self.proj_out = nn.Linear(hidden, dim, bias=False)
        self.proj_in = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(F.silu(self.proj_in_gate(x)) * self.proj_in(x))


class GeluMLP(nn.Module):
    """7B MLP ("normal"): `proj_out(gelu_tanh(proj_in(x)))` with biases."""

    def __init__(self, dim: int, expand_ratio: int):
        super().__init__()
        self.proj_in = nn.Linear(dim, dim * expand_ratio)
        self.proj_out = nn.Linear(dim * expand_ratio, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(F.gelu(self.proj_in(x), approximate="tanh"))


MLP_TYPES: dict[str, type[nn.Module]] = {"swiglu": SwiGLUMLP, "normal": GeluMLP}


class TimeEmbedding(nn.Module):
    """Sinusoids of the raw timestep (fp32) -> Linear -> SiLU -> Linear -> SiLU -> Linear."""

    def __init__(self, sinusoidal_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.sinusoidal_dim = sinusoidal_dim
        self.proj_in = nn.Linear(sinusoidal_dim, hidden_dim)
        self.proj_hid = nn.Linear(hidden_dim, hidden_dim)
        self.proj_out = nn.Linear(hidden_dim, output_dim)

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        # The arguments reach ~1000 rad: the sinusoids must be computed in fp32 whatever the model dtype.
        emb = get_timestep_embedding(
            timestep.float(), self.sinusoidal_dim, flip_sin_to_cos=False, downscale_freq_shift=0
        )
        emb = emb.to(self.proj_in.weight.dtype)
        return self.proj_out(F.silu(self.proj_hid(F.silu(self.proj_in(emb)))))


Grid = tuple[int, int, int]


class PatchIn(nn.Module):
    """Per sample `(t, h, w, C)` -> `(t, h/ph, w/pw, (ph pw C))` -> Linear. The temporal patch must be 1."""

    def __init__(self, in_channels: int, patch_size: Sequence[int], dim: int):
        super().__init__()
        self.patch_size = tuple(patch_size)
        _, ph, pw = self.patch_size
        self.proj = nn.Linear(in_channels * ph * pw, dim)

    def patch_grids(self, grids: Sequence[Grid]) -> list[Grid]:
        _, ph, pw = self.patch_size
        for t, h, w in grids:
            if h % ph or w % pw:
                raise ValueError(
                    f"latent height and width must be multiples of {ph} and {pw} (pixel sizes multiples of "
                    f"{8 * ph} and {8 * pw}), got a latent of {h}x{w}"
                )
        return [(t, h // ph, w // pw) for t, h, w in grids]

    def forward(self, vid: torch.Tensor, grids: Sequence[Grid]) -> torch.Tensor:
        _, ph, pw = self.patch_size
        samples = vid.split([t * h * w for t, h, w in grids])
        patched = [
            x.view(t, h, ph, w, pw, -1).permute(0, 1, 3, 2, 4, 5).reshape(t * h * w, -1)
            for x, (t, h, w) in zip(samples, self.patch_grids(grids))
        ]
        return self.proj(torch.cat(patched) if len(patched) > 1 else patched[0])


class PatchOut(nn.Module):
    """Linear -> per sample `(t, h', w', (ph pw C))` -> `(t, h' ph, w' pw, C)` rows in raster order."""

    def __init__(self, out_channels: int, patch_size: Sequence[int], dim: int):
        super().__init__()
        self.patch_size = tuple(patch_size)
        _, ph, pw = self.patch_size
        self.proj = nn.Linear(dim, out_channels * ph * pw)

    def forward(self, vid: torch.Tensor, patch_grids: Sequence[Grid]) -> torch.Tensor:
        _, ph, pw = self.patch_size
        vid = self.proj(vid)
        samples = vid.split([t * h * w for t, h, w in patch_grids])
        unpatched = [
            x.view(t, h, w, ph, pw, -1).permute(0, 1, 3, 2, 4, 5).reshape(t * h * ph * w * pw, -1)
            for x, (t, h, w) in zip(samples, patch_grids)
        ]
        return torch.cat(unpatched) if len(unpatched) > 1 else unpatched[0]
