# Ported from ByteDance Seed's SeedVR (https://github.com/ByteDance-Seed/SeedVR, Apache-2.0),
# models/dit_v2 (3B) and models/dit (7B): the NaDiT and its configs; rewritten for this project (see NOTICE).
"""The SeedVR2 NaDiT (native-resolution diffusion transformer), 3B and 7B variants (spec section 2).

State dict keys and shapes are exactly the official ones, so the released checkpoints load with `strict=True`.
The 3B (`models/dit_v2`) and 7B (`models/dit`) differ only in weight sharing, MLP type, RoPE, the 3B last-block
text pass-through and the 3B output norm; everything else is shared code.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, FrozenDict, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from seedvr_local import kernels

from seedvr_local.models.dit_blocks import MMSRBlock
from seedvr_local.models.dit_layers import MLP_TYPES, AdaSingle, PatchIn, PatchOut, RMSNorm, TimeEmbedding
from seedvr_local.models.rope import MMRope3d, PixelRope3d
from seedvr_local.models.window_attention import TokenLayout, resolve_attention_backend
from seedvr_local.models.windows import WINDOW_METHODS

SEEDVR2_WINDOW = (4, 3, 3)
SEEDVR2_WINDOW_METHODS = ("720pwin_by_size_bysize", "720pswin_by_size_bysize")  # alternating, even layers first
_RMS_NORMS = ("fusedrms", "rms")  # apex fused and plain RMSNorm: the same maths

#: The constructor arguments that only one variant reads; the other variant must leave them at their defaults.
_VARIANT_FIELDS = {
    "3b": ("mm_layers", "rope_type", "rope_dim", "output_norm", "txt_in_norm"),
    "7b": ("qk_rope", "shared_mlp", "shared_qkv"),
}
#: Constructor arguments named differently from the official config field: `vid_out_norm` is also the name of the
#: output norm's submodule (its checkpoint keys), which a config field of that name would shadow (diffusers answers
#: attribute reads of config fields with the config value).
_OFFICIAL_NAMES = {"output_norm": "vid_out_norm"}
# Accepted in official configs: ignored by the official inference code, or checked to hold the only value it has.
_IGNORED_FIELDS = {
    "msa_type", "mca_type", "block_type", "gradient_checkpoint", "patch_type", "txt_in_norm_scale_factor",
    "txt_proj_type", "temporal_window_size", "temporal_shifted",
}  # fmt: skip


def _other_variant(variant: str) -> str:
    return next(v for v in _VARIANT_FIELDS if v != variant)


def _check_variant(variant: Any) -> None:
    if variant not in _VARIANT_FIELDS:
        raise ValueError(f"DiT variant must be '3b' or '7b', got {variant!r}")


def _constructor_defaults() -> dict[str, Any]:
    """NaDiT's constructor arguments -> their defaults (`inspect.Parameter.empty` for the required ones)."""
    parameters = list(inspect.signature(NaDiT.__init__).parameters.values())[1:]
    return {p.name: p.default for p in parameters}


class DiTConfig(FrozenDict):
    """A checked NaDiT architecture: `NaDiT`'s constructor arguments with the defaults filled in, `patch_size` a
    tuple, `window` and `window_method` one per layer. Read-only, by key or attribute.

    A model's `config` holds the same items; `NaDiT.from_config(cfg)` builds the model. `from_dict` reads the
    official yaml field names (`configs_3b|7b/main.yaml` under `dit.model`), strictly.
    """

    @classmethod
    def checked(cls, **fields: Any) -> "DiTConfig":
        """From NaDiT constructor arguments; raises ValueError (TypeError for an unknown name) if they are not a
        model this code can build."""
        defaults = _constructor_defaults()
        unknown = sorted(set(fields) - set(defaults))
        if unknown:
            raise TypeError(f"unknown NaDiT argument(s): {', '.join(unknown)}")
        required = [name for name, default in defaults.items() if default is inspect.Parameter.empty]
        missing = [name for name in required if name not in fields]
        if missing:
            raise ValueError(f"a NaDiT config needs {', '.join(missing)}")
        cfg = {name: fields.get(name, default) for name, default in defaults.items()}
        variant = cfg["variant"]
        _check_variant(variant)
        other = _other_variant(variant)
        stray = [name for name in _VARIANT_FIELDS[other] if cfg[name] != defaults[name]]
        if stray:
            raise ValueError(f"the {variant} DiT has no {', '.join(stray)} (a {other} field)")
        _check_common(cfg)
        if variant == "3b":
            _check_3b(cfg)
        return cls(cfg)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], variant: str | None = None) -> "DiTConfig":
        """From an official yaml-style dict (case.json, manifests, tiny_model/config.json) or `to_dict()`."""
        d = dict(d)
        stated = d.pop("variant", None)
        variant = variant or stated
        if stated is not None and stated != variant:
            raise ValueError(f"the DiT config says variant {stated!r} but {variant!r} was asked for")
        _check_variant(variant)
        other = set(_VARIANT_FIELDS[_other_variant(variant)])
        allowed = {_OFFICIAL_NAMES.get(name, name) for name in _constructor_defaults() if name not in other}
        allowed -= {"variant"}
        unknown = sorted(set(d) - allowed - _IGNORED_FIELDS)
        if unknown:
            raise ValueError(f"unknown field(s) in the {variant} DiT config: {', '.join(unknown)}")
        block_types = d.get("block_type", "mmdit_sr")
        if set([block_types] if isinstance(block_types, str) else block_types) != {"mmdit_sr"}:
            raise ValueError(f"only block_type 'mmdit_sr' is supported, got {block_types!r}")
        if d.get("patch_type", "v1") != "v1":
            raise ValueError(f"only patch_type 'v1' is supported, got {d['patch_type']!r}")
        official = {name: _OFFICIAL_NAMES.get(name, name) for name in _constructor_defaults()}
        return cls.checked(variant=variant, **{name: d[key] for name, key in official.items() if key in d})

    def to_dict(self) -> dict[str, Any]:
        """The official field names of this variant plus `variant`, JSON-friendly."""
        other = _VARIANT_FIELDS[_other_variant(self.variant)]
        out = {}
        for name, value in self.items():
            if name in other:
                continue
            if name == "window":
                value = [list(w) for w in value]
            elif isinstance(value, (tuple, list)):
                value = list(value)
            out[_OFFICIAL_NAMES.get(name, name)] = value
        return out

    @classmethod
    def seedvr2_3b(cls) -> "DiTConfig":
        """`configs_3b/main.yaml`: 3,391,476,448 parameters."""
        return cls.checked(
            variant="3b", vid_dim=2560, txt_in_dim=5120, txt_dim=2560, emb_dim=6 * 2560, heads=20, head_dim=128,
            expand_ratio=4, num_layers=32, mm_layers=10, mlp_type="swiglu", rope_type="mmrope3d", rope_dim=128,
            output_norm="fusedrms", txt_in_norm="fusedln",
        )  # fmt: skip

    @classmethod
    def seedvr2_7b(cls) -> "DiTConfig":
        """`configs_7b/main.yaml`: 8,239,608,232 parameters."""
        return cls.checked(
            variant="7b", vid_dim=3072, txt_in_dim=5120, txt_dim=3072, emb_dim=6 * 3072, heads=24, head_dim=128,
            expand_ratio=4, num_layers=36, mlp_type="normal", qk_rope=True, shared_mlp=False, shared_qkv=False,
        )  # fmt: skip


def _check_common(cfg: dict[str, Any]) -> None:
    patch = cfg["patch_size"]
    patch = (patch,) * 3 if isinstance(patch, int) else tuple(patch)
    if len(patch) != 3 or patch[0] != 1:
        raise ValueError(f"patch_size must be [1, ph, pw] (no temporal patching), got {cfg['patch_size']!r}")
    cfg["patch_size"] = patch
    cfg["window"] = _per_layer_window(cfg["window"], cfg["num_layers"])
    cfg["window_method"] = _per_layer_method(cfg["window_method"], cfg["num_layers"])
    if not isinstance(cfg["txt_in_dim"], (int, type(None))):
        raise ValueError(f"txt_in_dim must be one int (a single text encoder), got {cfg['txt_in_dim']!r}")
    if cfg["ada"] != "single":
        raise ValueError(f"only ada='single' is supported, got {cfg['ada']!r}")
    if cfg["emb_dim"] != 6 * cfg["vid_dim"] or cfg["emb_dim"] != 6 * cfg["txt_dim"]:
        raise ValueError(f"ada 'single' needs emb_dim == 6 * vid_dim == 6 * txt_dim, got {cfg['emb_dim']}")
    if cfg["mlp_type"] not in MLP_TYPES:
        raise ValueError(f"mlp_type must be one of {', '.join(MLP_TYPES)}, got {cfg['mlp_type']!r}")
    for name in ("norm", "qk_norm", "output_norm"):
        value = cfg[name]
        if value is not None and value not in _RMS_NORMS:
            official = _OFFICIAL_NAMES.get(name, name)
            raise ValueError(f"{official} must be an RMS norm ({', '.join(_RMS_NORMS)}), got {value!r}")
    if cfg["norm"] is None:
        raise ValueError("norm must be an RMS norm, got None")


def _check_3b(cfg: dict[str, Any]) -> None:
    if cfg["mm_layers"] is None:
        raise ValueError("a 3B DiT config needs mm_layers (the number of blocks with separate vid/txt weights)")
    if not isinstance(cfg["mm_layers"], int):
        cfg["mm_layers"] = [bool(v) for v in cfg["mm_layers"]]
        if len(cfg["mm_layers"]) != cfg["num_layers"]:
            raise ValueError(f"mm_layers lists {len(cfg['mm_layers'])} layers, num_layers is {cfg['num_layers']}")
    if cfg["rope_type"] not in (None, "mmrope3d"):
        raise ValueError(f"3B rope_type must be 'mmrope3d' or None, got {cfg['rope_type']!r}")
    if cfg["rope_dim"] is None:
        cfg["rope_dim"] = cfg["head_dim"] // 2  # the official default
    if 6 * ((cfg["rope_dim"] // 3) // 2) > cfg["head_dim"]:
        raise ValueError(f"rope_dim {cfg['rope_dim']} rotates more dims than head_dim {cfg['head_dim']}")


def _per_layer_window(window: Any, num_layers: int) -> list[tuple[int, int, int]]:
    if window is None:
        window = SEEDVR2_WINDOW
    if len(window) == 3 and all(isinstance(v, int) for v in window):
        window = [window] * num_layers
    window = [tuple(int(v) for v in w) for w in window]
    if len(window) != num_layers or any(len(w) != 3 or min(w) < 1 for w in window):
        raise ValueError(f"window must be one (t, h, w) window count or one per layer, got {window!r}")
    return window


def _per_layer_method(method: Any, num_layers: int) -> list[str]:
    if method is None:
        method = [SEEDVR2_WINDOW_METHODS[i % 2] for i in range(num_layers)]
    if isinstance(method, str):
        method = [method] * num_layers
    method = list(method)
    if len(method) != num_layers:
        raise ValueError(f"window_method lists {len(method)} layers, num_layers is {num_layers}")
    for m in method:
        if m not in WINDOW_METHODS:
            raise ValueError(f"unknown window_method {m!r}; known: {', '.join(WINDOW_METHODS)}")
    return method


class NaDiT(kernels.ModelBackends, ModelMixin, ConfigMixin):
    """SeedVR2 NaDiT. Build it with `NaDiT.from_config(DiTConfig...)` or `from_pretrained`; `config` holds the
    checked `DiTConfig`.

    The constructor arguments are the official config fields (`output_norm` is the official `vid_out_norm`); those
    of the other variant must keep their defaults. `window`/`window_method` may be given per layer or once for all
    layers (default: (4, 3, 3) windows, regular / shifted alternating); `txt_in_dim` None or equal to `txt_dim`
    means no text input projection; `rope_dim` defaults to `head_dim // 2` as in the official code; `txt_in_norm`
    is unused by the official code when `txt_in_dim` is an int. 3B only: `mm_layers` (the first blocks, or a flag
    per block, with separate video/text weights), `rope_type`, `rope_dim`, `output_norm`, `txt_in_norm`. 7B only:
    `qk_rope`, `shared_mlp`, `shared_qkv`.

    Runs in the dtype of its weights (fp32, bf16 or fp16) without autocast; norms, RoPE, sinusoids and
    modulation sums are computed in fp32 internally. The window attention (`set_window_attention_backend`) and
    the kernel ops (`set_kernel_backend`) are chosen per model, for the device and dtype it is on.
    """

    _repeated_blocks = ["MMSRBlock"]
    # The AdaSingle offsets are fp32 in the official checkpoints and added to the fp32 time embedding in fp32 even
    # under bf16 autocast (spec 2.11); rounding them to the weights' dtype would shift every modulation.
    _keep_in_fp32_modules = ["ada", "vid_out_ada"]  # module names, matched as whole components of a key

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
        vid_in_channels: int = 33,
        vid_out_channels: int = 16,
        txt_in_dim: int | None = None,
        expand_ratio: int = 4,
        norm: str = "fusedrms",
        norm_eps: float = 1e-5,
        ada: str = "single",
        qk_bias: bool = False,
        qk_norm: str | None = "fusedrms",
        patch_size: Sequence[int] = (1, 2, 2),
        mlp_type: str = "normal",
        window: Any = None,
        window_method: Any = None,
        mm_layers: int | Sequence[bool] | None = None,
        rope_type: str | None = "mmrope3d",
        rope_dim: int | None = None,
        output_norm: str | None = None,
        txt_in_norm: str | None = None,
        qk_rope: bool = True,
        shared_mlp: bool = False,
        shared_qkv: bool = False,
    ):
        super().__init__()
        # The decorator registered the arguments as given; the config keeps them checked and completed.
        self.register_to_config(**DiTConfig.checked(**{k: v for k, v in self.config.items() if not k.startswith("_")}))
        cfg = self.config
        d = cfg.vid_dim
        self.vid_in = PatchIn(cfg.vid_in_channels, cfg.patch_size, d)
        use_txt_in = cfg.txt_in_dim and cfg.txt_in_dim != cfg.txt_dim
        self.txt_in = nn.Linear(cfg.txt_in_dim, cfg.txt_dim) if use_txt_in else nn.Identity()
        self.emb_in = TimeEmbedding(256, max(cfg.vid_dim, cfg.txt_dim), cfg.emb_dim)
        self.blocks = nn.ModuleList(self._block(cfg, i) for i in range(cfg.num_layers))
        self.vid_out_norm = None
        if cfg.variant == "3b" and cfg.output_norm is not None:
            self.vid_out_norm = RMSNorm(d, cfg.norm_eps)
            self.vid_out_ada = AdaSingle(d, layers=("out",), modes=("in",))
        self.vid_out = PatchOut(cfg.vid_out_channels, cfg.patch_size, d)

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

    def set_window_attention_backend(self, name: str) -> str:
        """`auto` (the default) or a key of `ATTENTION_BACKENDS` -> the backend this model now runs, resolved for
        the device and dtype it is on (a named one that cannot run there is a ValueError).

        Not diffusers' `set_attention_backend`: its backends run `dispatch_attention_fn` on dense batches, while
        these run the window attention's packed or grouped layouts.
        """
        return self._set_backend("window attention", name)

    @property
    def window_attention_backend(self) -> str:
        """The window attention backend in force for this model where it is now."""
        return self._backend("window attention")

    def _backend_resolvers(self):
        head_dim = self.config.head_dim
        return {
            **super()._backend_resolvers(),
            "window attention": (
                lambda: "auto",
                lambda name, device, dtype: resolve_attention_backend(name, device, dtype, head_dim),
            ),
        }

    def _timesteps(self, timestep, batch: int, device: torch.device) -> torch.Tensor:
        timestep = torch.as_tensor(timestep, dtype=torch.float32, device=device).reshape(-1)
        if timestep.numel() == 1:
            return timestep.expand(batch)
        if timestep.numel() != batch:
            raise ValueError(f"got {timestep.numel()} timesteps for a batch of {batch} samples")
        return timestep

    @kernels.runs_kernels
    def forward(
        self,
        vid: torch.Tensor,
        txt: torch.Tensor,
        vid_shape: torch.Tensor,
        txt_shape: torch.Tensor,
        timestep: torch.Tensor | float,
        periodic: bool = False,
    ) -> torch.Tensor:
        """The official NA-flattened call.

        vid `(L, vid_in_channels)`: each sample's latent tokens in (t, h, w) raster order, samples concatenated;
        txt `(Lt, txt_in_dim)`; vid_shape `(B, 3)` latent `(t, h, w)`; txt_shape `(B, 1)`; timestep `(B,)` raw
        (1000.0 for SeedVR2). Returns `(L, vid_out_channels)` in the same layout. Samples are independent.
        `periodic`: each frame is one period of a tileable image; the attention windows wrap around its sides
        (`windows.window_boxes`), the only place where the DiT sees positions.
        """
        cfg = self.config
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
        layout = TokenLayout(patch_grids, txt_lens, vid.device, self.window_attention_backend, periodic)
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
        self,
        vids: Sequence[torch.Tensor],
        txts: Sequence[torch.Tensor],
        timestep: torch.Tensor | float,
        periodic: bool = False,
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
        out = self.forward(vid, txt, vid_shape, txt_shape, timestep, periodic)
        return [
            o.view(t, h, w, -1).permute(3, 0, 1, 2)
            for o, (t, h, w) in zip(out.split([t * h * w for t, h, w in shapes]), shapes)
        ]
