"""The SeedVR2 NaDiT (native-resolution diffusion transformer), 3B and 7B variants (spec section 2).

State dict keys and shapes are exactly the official ones, so the released checkpoints load with `strict=True`.
The 3B (`models/dit_v2`) and 7B (`models/dit`) differ only in weight sharing, MLP type, RoPE, the 3B last-block
text pass-through and the 3B output norm; everything else is shared code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from seedvr_local import kernels

from seedvr_local.models.dit_blocks import MMSRBlock
from seedvr_local.models.dit_layers import MLP_TYPES, AdaSingle, PatchIn, PatchOut, RMSNorm, TimeEmbedding
from seedvr_local.models.rope import MMRope3d, PixelRope3d
from seedvr_local.models.window_attention import ATTENTION_BACKENDS, TokenLayout, WindowAttention
from seedvr_local.models.windows import WINDOW_METHODS

Variant = Literal["3b", "7b"]

SEEDVR2_WINDOW = (4, 3, 3)
SEEDVR2_WINDOW_METHODS = ("720pwin_by_size_bysize", "720pswin_by_size_bysize")  # alternating, even layers first
_RMS_NORMS = ("fusedrms", "rms")  # apex fused and plain RMSNorm: the same maths

_COMMON_FIELDS = (
    "vid_in_channels", "vid_out_channels", "vid_dim", "txt_in_dim", "txt_dim", "emb_dim", "heads", "head_dim",
    "expand_ratio", "norm", "norm_eps", "ada", "qk_bias", "qk_norm", "patch_size", "num_layers", "mlp_type",
    "window", "window_method",
)  # fmt: skip
_VARIANT_FIELDS = {
    "3b": ("mm_layers", "rope_type", "rope_dim", "vid_out_norm", "txt_in_norm"),
    "7b": ("qk_rope", "shared_mlp", "shared_qkv"),
}
# Accepted in official configs: ignored by the official inference code, or checked to hold the only value it has.
_IGNORED_FIELDS = {
    "msa_type", "mca_type", "block_type", "gradient_checkpoint", "patch_type", "txt_in_norm_scale_factor",
    "txt_proj_type", "temporal_window_size", "temporal_shifted",
}  # fmt: skip


@dataclass
class DiTConfig:
    """The NaDiT architecture, with the official yaml field names (`configs_3b|7b/main.yaml` under `dit.model`).

    Fields of the other variant are ignored (`to_dict` leaves them out). `window`/`window_method` may be given
    per layer or once for all layers; they are stored per layer.
    """

    variant: Variant
    vid_dim: int
    txt_dim: int
    emb_dim: int
    heads: int
    head_dim: int
    num_layers: int
    vid_in_channels: int = 33
    vid_out_channels: int = 16
    txt_in_dim: int | None = None  # None or == txt_dim: no input projection
    expand_ratio: int = 4
    norm: str = "fusedrms"
    norm_eps: float = 1e-5
    ada: str = "single"
    qk_bias: bool = False
    qk_norm: str | None = "fusedrms"
    patch_size: Sequence[int] = (1, 2, 2)
    mlp_type: str = "normal"
    window: Any = None  # default: (4, 3, 3) on every layer
    window_method: Any = None  # default: regular / shifted alternating
    # 3B only
    mm_layers: int | Sequence[bool] | None = None  # blocks with separate video/text weights (the first ones)
    rope_type: str | None = "mmrope3d"
    rope_dim: int | None = None  # default head_dim // 2, as the official code
    vid_out_norm: str | None = None
    txt_in_norm: str | None = None  # unused by the official code when txt_in_dim is an int
    # 7B only
    qk_rope: bool = True
    shared_mlp: bool = False
    shared_qkv: bool = False

    def __post_init__(self):
        if self.variant not in _VARIANT_FIELDS:
            raise ValueError(f"DiT variant must be '3b' or '7b', got {self.variant!r}")
        patch = self.patch_size
        patch = (patch,) * 3 if isinstance(patch, int) else tuple(patch)
        if len(patch) != 3 or patch[0] != 1:
            raise ValueError(f"patch_size must be [1, ph, pw] (no temporal patching), got {self.patch_size!r}")
        self.patch_size = patch
        self.window = self._per_layer_window(self.window)
        self.window_method = self._per_layer_method(self.window_method)
        if not isinstance(self.txt_in_dim, (int, type(None))):
            raise ValueError(f"txt_in_dim must be one int (a single text encoder), got {self.txt_in_dim!r}")
        if self.ada != "single":
            raise ValueError(f"only ada='single' is supported, got {self.ada!r}")
        if self.emb_dim != 6 * self.vid_dim or self.emb_dim != 6 * self.txt_dim:
            raise ValueError(f"ada 'single' needs emb_dim == 6 * vid_dim == 6 * txt_dim, got {self.emb_dim}")
        if self.mlp_type not in MLP_TYPES:
            raise ValueError(f"mlp_type must be one of {', '.join(MLP_TYPES)}, got {self.mlp_type!r}")
        for name in ("norm", "qk_norm", "vid_out_norm"):
            value = getattr(self, name)
            if value is not None and value not in _RMS_NORMS:
                raise ValueError(f"{name} must be an RMS norm ({', '.join(_RMS_NORMS)}), got {value!r}")
        if self.norm is None:
            raise ValueError("norm must be an RMS norm, got None")
        if self.variant == "3b":
            self._check_3b()

    def _check_3b(self) -> None:
        if self.mm_layers is None:
            raise ValueError("a 3B DiT config needs mm_layers (the number of blocks with separate vid/txt weights)")
        if not isinstance(self.mm_layers, int):
            self.mm_layers = [bool(v) for v in self.mm_layers]
            if len(self.mm_layers) != self.num_layers:
                raise ValueError(f"mm_layers lists {len(self.mm_layers)} layers, num_layers is {self.num_layers}")
        if self.rope_type not in (None, "mmrope3d"):
            raise ValueError(f"3B rope_type must be 'mmrope3d' or None, got {self.rope_type!r}")
        if self.rope_dim is None:
            self.rope_dim = self.head_dim // 2
        if 6 * ((self.rope_dim // 3) // 2) > self.head_dim:
            raise ValueError(f"rope_dim {self.rope_dim} rotates more dims than head_dim {self.head_dim}")

    def _per_layer_window(self, window) -> list[tuple[int, int, int]]:
        if window is None:
            window = SEEDVR2_WINDOW
        if len(window) == 3 and all(isinstance(v, int) for v in window):
            window = [window] * self.num_layers
        window = [tuple(int(v) for v in w) for w in window]
        if len(window) != self.num_layers or any(len(w) != 3 or min(w) < 1 for w in window):
            raise ValueError(f"window must be one (t, h, w) window count or one per layer, got {window!r}")
        return window

    def _per_layer_method(self, method) -> list[str]:
        if method is None:
            method = [SEEDVR2_WINDOW_METHODS[i % 2] for i in range(self.num_layers)]
        if isinstance(method, str):
            method = [method] * self.num_layers
        method = list(method)
        if len(method) != self.num_layers:
            raise ValueError(f"window_method lists {len(method)} layers, num_layers is {self.num_layers}")
        for m in method:
            if m not in WINDOW_METHODS:
                raise ValueError(f"unknown window_method {m!r}; known: {', '.join(WINDOW_METHODS)}")
        return method

    @classmethod
    def from_dict(cls, d: dict, variant: str | None = None) -> "DiTConfig":
        """From an official yaml-style dict (case.json, manifests, tiny_model/config.json) or `to_dict()`."""
        d = dict(d)
        stated = d.pop("variant", None)
        variant = variant or stated
        if stated is not None and stated != variant:
            raise ValueError(f"the DiT config says variant {stated!r} but {variant!r} was asked for")
        if variant not in _VARIANT_FIELDS:
            raise ValueError(f"DiT variant must be '3b' or '7b', got {variant!r}")
        allowed = set(_COMMON_FIELDS) | set(_VARIANT_FIELDS[variant])
        unknown = sorted(set(d) - allowed - _IGNORED_FIELDS)
        if unknown:
            raise ValueError(f"unknown field(s) in the {variant} DiT config: {', '.join(unknown)}")
        block_types = d.get("block_type", "mmdit_sr")
        if set([block_types] if isinstance(block_types, str) else block_types) != {"mmdit_sr"}:
            raise ValueError(f"only block_type 'mmdit_sr' is supported, got {block_types!r}")
        if d.get("patch_type", "v1") != "v1":
            raise ValueError(f"only patch_type 'v1' is supported, got {d['patch_type']!r}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name != "variant"]
        missing = [name for name in required if name not in d]
        if missing:
            raise ValueError(f"the {variant} DiT config is missing field(s): {', '.join(missing)}")
        return cls(variant=variant, **{k: v for k, v in d.items() if k in allowed})

    def to_dict(self) -> dict:
        """The official field names of this variant plus `variant`, JSON-friendly."""
        out = {"variant": self.variant}
        for name in _COMMON_FIELDS + _VARIANT_FIELDS[self.variant]:
            value = getattr(self, name)
            if name == "window":
                value = [list(w) for w in value]
            elif isinstance(value, (tuple, list)):
                value = list(value)
            out[name] = value
        return out

    @classmethod
    def seedvr2_3b(cls) -> "DiTConfig":
        """`configs_3b/main.yaml`: 3,391,476,448 parameters."""
        return cls(
            variant="3b", vid_dim=2560, txt_in_dim=5120, txt_dim=2560, emb_dim=6 * 2560, heads=20, head_dim=128,
            expand_ratio=4, num_layers=32, mm_layers=10, mlp_type="swiglu", rope_type="mmrope3d", rope_dim=128,
            vid_out_norm="fusedrms", txt_in_norm="fusedln",
        )  # fmt: skip

    @classmethod
    def seedvr2_7b(cls) -> "DiTConfig":
        """`configs_7b/main.yaml`: 8,239,608,232 parameters."""
        return cls(
            variant="7b", vid_dim=3072, txt_in_dim=5120, txt_dim=3072, emb_dim=6 * 3072, heads=24, head_dim=128,
            expand_ratio=4, num_layers=36, mlp_type="normal", qk_rope=True, shared_mlp=False, shared_qkv=False,
        )  # fmt: skip


class NaDiT(ModelMixin, ConfigMixin):
    """SeedVR2 NaDiT. The constructor arguments are the `DiTConfig` fields (see `from_dit_config`).

    Runs in the dtype of its weights (fp32, bf16 or fp16) without autocast; norms, RoPE, sinusoids and
    modulation sums are computed in fp32 internally.
    """

    @register_to_config
    def __init__(
        self,
        variant: str,
        vid_dim: int,
        txt_dim: int,
        emb_dim: int,
        heads: int,
        head_dim: int,
        num_layers: int,
        vid_in_channels: int = DiTConfig.vid_in_channels,
        vid_out_channels: int = DiTConfig.vid_out_channels,
        txt_in_dim: int | None = DiTConfig.txt_in_dim,
        expand_ratio: int = DiTConfig.expand_ratio,
        norm: str = DiTConfig.norm,
        norm_eps: float = DiTConfig.norm_eps,
        ada: str = DiTConfig.ada,
        qk_bias: bool = DiTConfig.qk_bias,
        qk_norm: str | None = DiTConfig.qk_norm,
        patch_size: Sequence[int] = DiTConfig.patch_size,
        mlp_type: str = DiTConfig.mlp_type,
        window: Any = DiTConfig.window,
        window_method: Any = DiTConfig.window_method,
        mm_layers: int | Sequence[bool] | None = DiTConfig.mm_layers,
        rope_type: str | None = DiTConfig.rope_type,
        rope_dim: int | None = DiTConfig.rope_dim,
        vid_out_norm: str | None = DiTConfig.vid_out_norm,
        txt_in_norm: str | None = DiTConfig.txt_in_norm,
        qk_rope: bool = DiTConfig.qk_rope,
        shared_mlp: bool = DiTConfig.shared_mlp,
        shared_qkv: bool = DiTConfig.shared_qkv,
    ):
        super().__init__()
        cfg = DiTConfig(**{f.name: self.config[f.name] for f in dataclasses.fields(DiTConfig)})
        self.dit_config = cfg
        d = cfg.vid_dim
        self.vid_in = PatchIn(cfg.vid_in_channels, cfg.patch_size, d)
        use_txt_in = cfg.txt_in_dim and cfg.txt_in_dim != cfg.txt_dim
        self.txt_in = nn.Linear(cfg.txt_in_dim, cfg.txt_dim) if use_txt_in else nn.Identity()
        self.emb_in = TimeEmbedding(256, max(cfg.vid_dim, cfg.txt_dim), cfg.emb_dim)
        self.blocks = nn.ModuleList(self._block(cfg, i) for i in range(cfg.num_layers))
        self.vid_out_norm = None
        if cfg.variant == "3b" and cfg.vid_out_norm is not None:
            self.vid_out_norm = RMSNorm(d, cfg.norm_eps)
            self.vid_out_ada = AdaSingle(d, layers=("out",), modes=("in",))
        self.vid_out = PatchOut(cfg.vid_out_channels, cfg.patch_size, d)

    def __getattr__(self, name: str):
        # `vid_out_norm` is both a config field and a submodule; diffusers would answer with the config value.
        modules = self.__dict__.get("_modules")
        if modules is not None and name in modules:
            return modules[name]
        return super().__getattr__(name)

    @staticmethod
    def _block(cfg: DiTConfig, i: int) -> MMSRBlock:
        if cfg.variant == "3b":
            separate = i < cfg.mm_layers if isinstance(cfg.mm_layers, int) else cfg.mm_layers[i]
            shared = dict.fromkeys(("shared_proj", "shared_qk_norm", "shared_mlp", "shared_ada"), not separate)
            rope = MMRope3d(cfg.rope_dim) if cfg.rope_type == "mmrope3d" else None
            text_passthrough = i == cfg.num_layers - 1
        else:
            shared = dict(shared_proj=cfg.shared_qkv, shared_qk_norm=False, shared_mlp=cfg.shared_mlp, shared_ada=False)
            rope = PixelRope3d(cfg.head_dim // 2) if cfg.qk_rope else None
            text_passthrough = False
        return MMSRBlock(
            vid_dim=cfg.vid_dim,
            txt_dim=cfg.txt_dim,
            heads=cfg.heads,
            head_dim=cfg.head_dim,
            expand_ratio=cfg.expand_ratio,
            norm_eps=cfg.norm_eps,
            qk_bias=cfg.qk_bias,
            qk_norm=cfg.qk_norm is not None,
            mlp_type=cfg.mlp_type,
            window=cfg.window[i],
            window_method=cfg.window_method[i],
            rope=rope,
            text_passthrough=text_passthrough,
            **shared,
        )

    def set_attention_backend(self, name: str) -> None:
        """`auto` (default) or one of `ATTENTION_BACKENDS`; all are exact, they differ only in speed."""
        if name != "auto" and name not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {name!r}; known: auto, {', '.join(ATTENTION_BACKENDS)}")
        for module in self.modules():
            if isinstance(module, WindowAttention):
                module.attention_backend = name

    @classmethod
    def from_dit_config(cls, cfg: DiTConfig) -> "NaDiT":
        return cls(**cfg.to_dict())

    def _timesteps(self, timestep, batch: int, device: torch.device) -> torch.Tensor:
        timestep = torch.as_tensor(timestep, dtype=torch.float32, device=device).reshape(-1)
        if timestep.numel() == 1:
            return timestep.expand(batch)
        if timestep.numel() != batch:
            raise ValueError(f"got {timestep.numel()} timesteps for a batch of {batch} samples")
        return timestep

    def forward(
        self,
        vid: torch.Tensor,
        txt: torch.Tensor,
        vid_shape: torch.Tensor,
        txt_shape: torch.Tensor,
        timestep: torch.Tensor | float,
    ) -> torch.Tensor:
        """The official NA-flattened call.

        vid `(L, vid_in_channels)`: each sample's latent tokens in (t, h, w) raster order, samples concatenated;
        txt `(Lt, txt_in_dim)`; vid_shape `(B, 3)` latent `(t, h, w)`; txt_shape `(B, 1)`; timestep `(B,)` raw
        (1000.0 for SeedVR2). Returns `(L, vid_out_channels)` in the same layout. Samples are independent.
        """
        cfg = self.dit_config
        grids = [tuple(int(v) for v in row) for row in vid_shape.reshape(-1, 3).tolist()]
        txt_lens = [int(n) for n in txt_shape.reshape(len(grids), -1).prod(-1).tolist()]
        expected = (sum(t * h * w for t, h, w in grids), cfg.vid_in_channels)
        if tuple(vid.shape) != expected:
            raise ValueError(f"vid must be {expected} for the latent shapes {grids}, got {tuple(vid.shape)}")
        expected = (sum(txt_lens), cfg.txt_in_dim or cfg.txt_dim)
        if tuple(txt.shape) != expected:
            raise ValueError(f"txt must be {expected} for the text lengths {txt_lens}, got {tuple(txt.shape)}")
        dtype = self.vid_in.proj.weight.dtype

        # Black/NaN outputs in fp16 are a known SeedVR2 failure (spec pitfall 7): a residual stream that grows
        # past 65504 overflows. Under fp16 weights the residuals stay fp32 and only each layer's input is fp16;
        # bf16 has fp32's range, so it keeps the official all-bf16 stream.
        residual_dtype = torch.float32 if dtype == torch.float16 else dtype

        patch_grids = self.vid_in.patch_grids(grids)
        vid = self.vid_in(vid.to(dtype), grids).to(residual_dtype)
        txt = self.txt_in(txt.to(dtype)).to(residual_dtype)
        emb = self.emb_in(self._timesteps(timestep, len(grids), vid.device))
        # "b (d l g)" -> (layer, {shift, scale, gate}, b, d) in fp32, once for all blocks.
        emb = emb.float().unflatten(-1, (-1, 2, 3)).permute(2, 3, 0, 1).contiguous()
        layout = TokenLayout(patch_grids, txt_lens, vid.device)
        for block in self.blocks:
            vid, txt = block(vid, txt, layout, emb)
        if self.vid_out_norm is not None:
            # Official quirk (spec 2.6): the output modulation reads the blocks' cached attn-slot embedding.
            shift, scale = self.vid_out_ada.modulation(emb[:1, :2])[0]
            vid = kernels.rms_norm_modulate(
                vid, scale, shift, eps=self.vid_out_norm.eps, weight=self.vid_out_norm.weight,
                index=layout.sample_index("vid"),
            )  # fmt: skip
        return self.vid_out(vid.to(dtype), patch_grids)

    def forward_samples(
        self, vids: Sequence[torch.Tensor], txts: Sequence[torch.Tensor], timestep: torch.Tensor | float
    ) -> list[torch.Tensor]:
        """Channels-first convenience: `vids[i] (33, t, h, w)`, `txts[i] (L_i, txt_in_dim)` ->
        `[(16, t, h, w)]`, one forward for the whole batch."""
        if len(vids) != len(txts):
            raise ValueError(f"got {len(vids)} videos but {len(txts)} text embeddings")
        shapes = [tuple(v.shape[1:]) for v in vids]
        vid = torch.cat([v.permute(1, 2, 3, 0).reshape(-1, v.shape[0]) for v in vids])
        txt = torch.cat(list(txts))
        vid_shape = torch.tensor(shapes, dtype=torch.int64)
        txt_shape = torch.tensor([[t.shape[0]] for t in txts], dtype=torch.int64)
        out = self.forward(vid, txt, vid_shape, txt_shape, timestep)
        return [
            o.view(t, h, w, -1).permute(3, 0, 1, 2)
            for o, (t, h, w) in zip(out.split([t * h * w for t, h, w in shapes]), shapes)
        ]
