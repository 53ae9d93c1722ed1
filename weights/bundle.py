"""A SeedVR2 weights directory, and loading the models it holds.

Layout (the official file names, as `seedvr-local download` writes them)::

    DIR/seedvr2_ema_3b.pth        the DiT: seedvr2_ema_{3b,7b}[_sharp][_fp16|_bf16|_fp8_e4m3fn[_mixed_block35_fp16]]
                                  .pth or .safetensors, or seedvr2_ema_{3b,7b}[_sharp]-<GGML type>.gguf such as
                                  seedvr2_ema_3b-Q4_K_M.gguf (the variant comes from the name)
    DIR/ema_vae.pth               the VAE: ema_vae[_fp16|_bf16|_fp8_e4m3fn].pth or .safetensors, or
                                  ema_vae-<GGML type>.gguf
    DIR/pos_emb.pt                the precomputed positive text embedding, [L, txt_in_dim]
    DIR/neg_emb.pt                optional (cfg scale 1.0 never uses it)
    DIR/config.json               optional: overrides the architecture and file names

`config.json` has the layout of the reference tiny bundle: `dit_variant` ("3b"/"7b"), `dit` and `vae` (configs
with the official field names, replacing the official architecture), `scaling_factor`, `shifting_factor`, and
`files` (`dit`, `vae`, `pos_emb`, `neg_emb`: file names inside DIR). Every field is optional.

`load_models` validates each checkpoint's keys and shapes before reading its data (against the shipped
manifests, or against the model built from `config.json`), builds the models without allocating their
parameters, loads the tensors cast to the target dtype with `assign=True` (so memory holds one copy), then moves
them to the device in eval mode with gradients off. Compact weights (GGUF blocks, fp8 and int8 weights) stay
compact on the device and are dequantised per layer at use (`models.quantized`).
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from seedvr_local.models.nadit import DiTConfig, NaDiT
from seedvr_local.models.vae import VAEConfig, VideoAutoencoder
from seedvr_local.weights.checkpoint import (
    ROPE_FREQS_SUFFIX,
    CheckpointFormatError,
    is_rope_freqs,
    read_shapes,
    read_state_dict,
)
from seedvr_local.weights.manifest import (
    DIT_MANIFESTS,
    VAE_MANIFEST,
    CheckpointMismatchError,
    Manifest,
    Shape,
    load_manifest,
    validate_state_dict,
)

VARIANTS = ("3b", "7b")
CONFIG_FILE = "config.json"
POS_EMB_FILE = "pos_emb.pt"
NEG_EMB_FILE = "neg_emb.pt"

_PRECISION = (
    r"(?:_(?P<precision>fp32|fp16|bf16|fp8_e4m3fn(?:_mixed_block35_fp16)?)"
    r"|-(?P<gguf>Q(?P<bits>[2-8])_(?:0|1|K(?:_[SML])?)))?"
)
_EXTENSION = r"\.(?:pth|pt|safetensors|gguf)"
DIT_FILE_PATTERN = re.compile(rf"^seedvr2_ema_(?P<variant>3b|7b)(?P<sharp>_sharp)?{_PRECISION}{_EXTENSION}$")
VAE_FILE_PATTERN = re.compile(rf"^ema_vae{_PRECISION}{_EXTENSION}$")

#: When a directory holds several conversions of one model, the most precise one is used (GGUF files come after
#: these, more bits first).
_PRECISION_PREFERENCE = (None, "fp32", "bf16", "fp16", "fp8_e4m3fn_mixed_block35_fp16", "fp8_e4m3fn")
LOADABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

_EXPECTED_FILES_HINT = {
    "dit": "the DiT (seedvr2_ema_3b.pth or seedvr2_ema_7b.pth, or a conversion such as "
    "seedvr2_ema_3b_fp16.safetensors or seedvr2_ema_3b-Q4_K_M.gguf)",
    "vae": "the VAE (ema_vae.pth or ema_vae_fp16.safetensors)",
    "pos_emb": f"the text embedding {POS_EMB_FILE}",
}


class WeightsDirError(ValueError):
    """A weights directory that cannot be used (incomplete, ambiguous, or a bad config.json)."""


class MissingWeightsError(WeightsDirError, FileNotFoundError):
    """A weights directory that does not exist or lacks a required file."""


@dataclass(frozen=True)
class WeightsDir:
    """What a weights directory holds; `inspect_weights_dir` reads only names and config.json, no tensors."""

    path: Path
    variant: str  # "3b" or "7b"
    dit_path: Path
    vae_path: Path
    pos_emb_path: Path
    neg_emb_path: Path | None
    dit_config_dict: dict[str, Any]  # official field names
    vae_config_dict: dict[str, Any]
    scaling_factor: float = 0.9152
    shifting_factor: float = 0.0
    sharp: bool = False  # the 7B "sharp" checkpoint
    config_path: Path | None = None  # config.json, when the directory has one
    custom_dit: bool = False  # the DiT architecture comes from config.json, not the official one
    custom_vae: bool = False

    @property
    def dit_config(self) -> DiTConfig:
        with self._config_errors("dit"):
            return DiTConfig.from_dict(self.dit_config_dict, self.variant)

    @property
    def vae_config(self) -> VAEConfig:
        with self._config_errors("vae"):
            return VAEConfig.from_dict(self.vae_config_dict)

    @contextmanager
    def _config_errors(self, section: str) -> Iterator[None]:
        """Say which file a bad architecture config came from."""
        try:
            yield
        except (TypeError, ValueError) as exc:
            source = f'"{section}" of {self.config_path}' if self.config_path else "the official config"
            raise WeightsDirError(f"{source}: {_first_line(exc)}") from None

    @property
    def description(self) -> str:
        name = f"SeedVR2 {self.variant.upper()}" + (" sharp" if self.sharp else "")
        return f"{name} ({self.dit_path.name}, {self.vae_path.name}) in {self.path}"


@dataclass
class LoadedModels:
    dit: NaDiT
    vae: VideoAutoencoder
    pos_emb: torch.Tensor  # [L, txt_in_dim], on the device, in the load dtype
    neg_emb: torch.Tensor | None
    weights_dir: WeightsDir | None  # None for models built in memory (`weights.tiny`)


def inspect_weights_dir(path: str | Path) -> WeightsDir:
    """Find the files of a weights directory and resolve its architecture; one clear error if incomplete."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise MissingWeightsError(
            f"weights directory {path} does not exist: run `seedvr-local download --model 3b` or point to a "
            f"directory with {_EXPECTED_FILES_HINT['dit']}, {_EXPECTED_FILES_HINT['vae']} and {POS_EMB_FILE}"
        )
    config_path = path / CONFIG_FILE
    config = _read_config(config_path) if config_path.is_file() else {}
    files = config.get("files", {})

    dit_path = _named_file(path, files.get("dit"), "dit") or _find_dit(path)
    vae_path = _named_file(path, files.get("vae"), "vae") or _find_vae(path)
    pos_emb_path = _named_file(path, files.get("pos_emb"), "pos_emb") or _existing(path / POS_EMB_FILE)
    neg_emb_path = _existing(path / files.get("neg_emb", NEG_EMB_FILE))  # optional, even when named
    missing = [
        _EXPECTED_FILES_HINT[role]
        for role, found in (("dit", dit_path), ("vae", vae_path), ("pos_emb", pos_emb_path))
        if found is None
    ]
    if missing:
        raise MissingWeightsError(
            f"weights directory {path} is incomplete: put {_join(missing)} in it, "
            "or run `seedvr-local download --model 3b|7b --dir DIR`"
        )

    name_match = DIT_FILE_PATTERN.match(dit_path.name)
    variant = config.get("dit_variant") or (name_match["variant"] if name_match else None)
    if variant not in VARIANTS:
        raise WeightsDirError(
            f"cannot tell whether {dit_path} is the 3B or the 7B model: name it like seedvr2_ema_3b.pth or set "
            f'"dit_variant": "3b" or "7b" in {config_path}'
        )
    vae_manifest = load_manifest(VAE_MANIFEST)
    pipeline = vae_manifest.pipeline or {}
    return WeightsDir(
        path=path,
        variant=variant,
        dit_path=dit_path,
        vae_path=vae_path,
        pos_emb_path=pos_emb_path,
        neg_emb_path=neg_emb_path,
        dit_config_dict=config.get("dit") or load_manifest(DIT_MANIFESTS[variant]).config,
        vae_config_dict=config.get("vae") or vae_manifest.config,
        scaling_factor=float(config.get("scaling_factor", pipeline.get("scaling_factor", 0.9152))),
        shifting_factor=float(config.get("shifting_factor", pipeline.get("shifting_factor", 0.0))),
        sharp=bool(name_match and name_match["sharp"]),
        config_path=config_path if config_path.is_file() else None,
        custom_dit="dit" in config,
        custom_vae="vae" in config,
    )


def load_models(
    weights_dir: str | Path | WeightsDir,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LoadedModels:
    """Validate, then load the DiT, the VAE and the text embeddings of a weights directory.

    Every file is checked (keys, shapes, embedding width) before any checkpoint data is read, so a bad
    directory fails in seconds even with 30 GB checkpoints.
    """
    info = weights_dir if isinstance(weights_dir, WeightsDir) else inspect_weights_dir(weights_dir)
    if dtype not in LOADABLE_DTYPES:
        raise ValueError(f"models can be loaded in float32, bfloat16 or float16, not {dtype}")
    device = torch.device(device)
    dit, dit_what = _empty_dit(info)
    vae, vae_what = _empty_vae(info)
    txt_in_dim = int(info.dit_config_dict["txt_in_dim"])
    pos_emb = load_text_embedding(info.pos_emb_path, txt_in_dim, device, dtype)
    neg_emb = load_text_embedding(info.neg_emb_path, txt_in_dim, device, dtype) if info.neg_emb_path else None
    dit = _load_into(dit, info.dit_path, dit_what, device, dtype)
    vae = _load_into(vae, info.vae_path, vae_what, device, dtype)
    return LoadedModels(dit=dit, vae=vae, pos_emb=pos_emb, neg_emb=neg_emb, weights_dir=info)


def validate_dit_shapes(found: dict[str, Shape], variant: str, what: str) -> None:
    """Check a DiT checkpoint's shapes against the official `variant` manifest.

    When they fit the other variant instead, the error says so (a 7B file named like a 3B one, say).
    """
    try:
        _validate(found, load_manifest(DIT_MANIFESTS[variant]), what)
    except CheckpointMismatchError as error:
        other = next(v for v in VARIANTS if v != variant)
        try:
            _validate(found, load_manifest(DIT_MANIFESTS[other]), what)
        except CheckpointMismatchError:
            raise error from None
        raise WeightsDirError(
            f"{what} holds the {other.upper()} model, but its name or config.json says {variant.upper()}: "
            f"rename it like seedvr2_ema_{other}.pth or fix dit_variant"
        ) from None


def _empty_dit(info: WeightsDir) -> tuple[nn.Module, str]:
    """The DiT without parameter memory, after checking the checkpoint's keys and shapes against it."""
    what = f"DiT checkpoint {info.dit_path}"
    found = read_shapes(info.dit_path)
    if not info.custom_dit:  # checked against the shipped manifest before any model code runs
        validate_dit_shapes(found, info.variant, what)
    with parameters_on_meta():
        model = NaDiT.from_config(info.dit_config)
    if info.custom_dit:
        _validate(found, _module_shapes(model), what)
    return model, what


def _empty_vae(info: WeightsDir) -> tuple[nn.Module, str]:
    what = f"VAE checkpoint {info.vae_path}"
    found = read_shapes(info.vae_path)
    if not info.custom_vae:
        _validate(found, load_manifest(VAE_MANIFEST), what)
    with parameters_on_meta():
        model = VideoAutoencoder.from_vae_config(info.vae_config)
    if info.custom_vae:
        _validate(found, _module_shapes(model), what)
    return model, what


def load_text_embedding(
    path: str | Path, txt_in_dim: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A precomputed text embedding file (a `torch.save`d `[L, txt_in_dim]` tensor)."""
    path = Path(path)
    try:
        embedding = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CheckpointFormatError(f"{path}: not a readable text embedding ({_first_line(exc)})") from None
    if not isinstance(embedding, torch.Tensor) or embedding.ndim != 2 or embedding.shape[1] != txt_in_dim:
        found = list(embedding.shape) if isinstance(embedding, torch.Tensor) else type(embedding).__name__
        raise CheckpointFormatError(f"{path}: expected a text embedding of shape [L, {txt_in_dim}], found {found}")
    return embedding.to(device=device, dtype=dtype)


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules with their parameters on the `meta` device (no memory, no init) and buffers for real.

    Buffers stay real because some are computed at construction and not stored in checkpoints (non-persistent
    buffers, and the RoPE frequencies whose stored values are never used); `load_state_dict(assign=True)` then
    replaces the meta parameters with the checkpoint's tensors.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = type(param)(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _load_into(
    model: nn.Module, path: Path, what: str, device: torch.device | str, dtype: torch.dtype
) -> nn.Module:
    # The RoPE frequencies the model computed itself are kept; a file's (possibly fp8) copy is never read.
    state_dict = read_state_dict(
        path, dtype, skip=is_rope_freqs, float32=_kept_in_float32(model), keep_quantized=True
    )
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    missing = [key for key in missing if not is_rope_freqs(key)]
    if missing or unexpected:  # validation ran first, so this means the model and its expectations disagree
        raise CheckpointMismatchError(what, missing, unexpected, {})
    still_meta = [name for name, tensor in _named_tensors(model) if tensor.device.type == "meta"]
    if still_meta:
        raise CheckpointMismatchError(what, still_meta, [], {})
    return model.to(device).eval().requires_grad_(False)


def _kept_in_float32(model: nn.Module) -> Callable[[str], bool]:
    """Whether a key belongs to one of the model's `_keep_in_fp32_modules` (diffusers' rule: a module name is
    one of the key's dotted parts), loaded in float32 whatever the load dtype."""
    names = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    return lambda key: not names.isdisjoint(key.split("."))


def _validate(found: dict, expected: Manifest | dict, what: str) -> None:
    validate_state_dict(found, expected, what, optional=[ROPE_FREQS_SUFFIX])


def _module_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        config = json.loads(text) if text.strip() else {}  # numz's repo ships an empty config.json
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsDirError(f"{path}: not valid JSON ({_first_line(exc)})") from None
    if not isinstance(config, dict):
        raise WeightsDirError(f"{path}: expected a JSON object")
    for section in ("dit", "vae", "files"):
        if section in config and not isinstance(config[section], dict):
            raise WeightsDirError(f'{path}: "{section}" must be an object')
    if config.get("dit_variant") not in (None, *VARIANTS):
        raise WeightsDirError(f'{path}: "dit_variant" must be "3b" or "7b", not {config["dit_variant"]!r}')
    return config


def _named_file(directory: Path, name: str | None, role: str) -> Path | None:
    """The file config.json names for `role`; naming a file that is absent is an error."""
    if name is None:
        return None
    path = directory / name
    if not path.is_file():
        raise MissingWeightsError(f"{directory / CONFIG_FILE} names {role} file {name}, which is not in {directory}")
    return path


def _find_dit(directory: Path) -> Path | None:
    candidates = [(path, DIT_FILE_PATTERN.match(path.name)) for path in sorted(directory.iterdir())]
    candidates = [(path, match) for path, match in candidates if match and path.is_file()]
    if not candidates:
        return None
    variants = {match["variant"] for _, match in candidates}
    if len(variants) > 1:
        names = ", ".join(path.name for path, _ in candidates)
        raise WeightsDirError(
            f"{directory} holds both 3B and 7B checkpoints ({names}): keep one, or name it in "
            f'{CONFIG_FILE} as {{"files": {{"dit": "..."}}}}'
        )
    # Prefer the regular model over "sharp", then the most precise format, then .pth over .safetensors.
    return min(
        candidates,
        key=lambda item: (bool(item[1]["sharp"]), _precision_rank(item[1]), item[0].suffix != ".pth"),
    )[0]


def _find_vae(directory: Path) -> Path | None:
    candidates = [(path, VAE_FILE_PATTERN.match(path.name)) for path in sorted(directory.iterdir())]
    candidates = [(path, match) for path, match in candidates if match and path.is_file()]
    if not candidates:
        return None
    return min(candidates, key=lambda item: (_precision_rank(item[1]), item[0].suffix != ".pth"))[0]


def _precision_rank(match: re.Match) -> tuple[int, int]:
    """Lower is more precise: the float formats in preference order, then GGUF files by bits per weight."""
    if match["gguf"]:
        return len(_PRECISION_PREFERENCE), -int(match["bits"])
    return _PRECISION_PREFERENCE.index(match["precision"]), 0


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
