"""Key/shape manifests of the official SeedVR2 checkpoints, and validation of a checkpoint against one.

The manifests ship with the package (``weights/manifests/<name>.txt``, written by
``weights/build_manifests.py``) so that a checkpoint is checked before any of its data is read. A manifest
file is a small text table::

    # comment lines
    source: "official SeedVR2 NaDiT (...)"      <- header: `field: <JSON value>` lines
    checkpoint_file: "seedvr2_ema_3b.pth"
    dtype: "float32"                             <- the dtype of every tensor without its own
    num_tensors: 635
    num_params: 3391476448
    config: {...}                                <- the official architecture config (resolved yaml fields)
    pipeline: {...}                              <- VAE only: scaling factor, shift, sampling, slicing
                                                 <- one blank line
    vid_in.proj.weight 2560x132                  <- `key shape [dtype]` in state_dict order; `-` is a scalar
    vid_in.proj.bias 2560
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable, Mapping, Sequence

Shape = tuple[int, ...]

#: The shipped manifests.
MANIFEST_NAMES = ("seedvr2_ema_3b", "seedvr2_ema_7b", "ema_vae")
#: The DiT manifest of each variant (the 7B "sharp" checkpoint has the 7B keys).
DIT_MANIFESTS = {"3b": "seedvr2_ema_3b", "7b": "seedvr2_ema_7b"}
#: The DiT manifest of each model `--model` names (`model_home.DOWNLOADABLE_MODELS`).
MODEL_MANIFESTS = {**DIT_MANIFESTS, "7b-sharp": DIT_MANIFESTS["7b"]}
VAE_MANIFEST = "ema_vae"

#: How many names of each kind of problem a mismatch message spells out before it only counts the rest.
MAX_NAMED_KEYS = 6


@dataclass(frozen=True, eq=True)
class Manifest:
    """Every state_dict key of one official checkpoint, in order, with its shape, plus the official config."""

    name: str
    shapes: dict[str, Shape]  # in state_dict order
    config: dict[str, Any]
    checkpoint_file: str = ""
    source: str = ""
    dtypes: dict[str, str] = field(default_factory=dict)  # per key, e.g. "float32"
    pipeline: dict[str, Any] | None = None  # the VAE's pipeline-level settings

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.shapes)

    @property
    def num_tensors(self) -> int:
        return len(self.shapes)

    @property
    def num_params(self) -> int:
        return sum(_numel(shape) for shape in self.shapes.values())


def load_manifest(name: str) -> Manifest:
    """The shipped manifest `name` (one of MANIFEST_NAMES; "3b" and "7b" name the DiT manifests)."""
    name = DIT_MANIFESTS.get(name, name)
    if name not in MANIFEST_NAMES:
        raise ValueError(f"unknown checkpoint manifest {name!r}; known: {', '.join(MANIFEST_NAMES)}")
    text = resources.files(__package__).joinpath("manifests", f"{name}.txt").read_text(encoding="utf-8")
    return parse_manifest(name, text)


def parse_manifest(name: str, text: str) -> Manifest:
    """Read the text format described in this module's docstring."""
    header: dict[str, Any] = {}
    shapes: dict[str, Shape] = {}
    dtypes: dict[str, str] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("#"):
            continue
        if not line.strip():
            break
        field_name, _, value = line.partition(":")
        header[field_name.strip()] = json.loads(value)
    default_dtype = header.get("dtype", "float32")
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        key, shape_text, *dtype = line.split()
        shapes[key] = () if shape_text == "-" else tuple(int(n) for n in shape_text.split("x"))
        dtypes[key] = dtype[0] if dtype else default_dtype
    manifest = Manifest(
        name=name,
        shapes=shapes,
        config=header.get("config", {}),
        checkpoint_file=header.get("checkpoint_file", ""),
        source=header.get("source", ""),
        dtypes=dtypes,
        pipeline=header.get("pipeline"),
    )
    # The counts guard against a truncated or hand-edited file.
    expected = (header.get("num_tensors", manifest.num_tensors), header.get("num_params", manifest.num_params))
    if (manifest.num_tensors, manifest.num_params) != expected:
        raise ValueError(
            f"manifest {name} is corrupt: {manifest.num_tensors} tensors / {manifest.num_params} params, "
            f"its header says {expected[0]} / {expected[1]}"
        )
    return manifest


def format_manifest(manifest: Manifest, comment: str = "") -> str:
    """The text form of `manifest` (inverse of parse_manifest)."""
    dtype_counts: dict[str, int] = {}
    for dtype in manifest.dtypes.values():
        dtype_counts[dtype] = dtype_counts.get(dtype, 0) + 1
    default_dtype = max(dtype_counts, key=dtype_counts.get) if dtype_counts else "float32"
    header: dict[str, Any] = {
        "source": manifest.source,
        "checkpoint_file": manifest.checkpoint_file,
        "dtype": default_dtype,
        "num_tensors": manifest.num_tensors,
        "num_params": manifest.num_params,
        "config": manifest.config,
    }
    if manifest.pipeline is not None:
        header["pipeline"] = manifest.pipeline
    lines = [f"# {line}" if line else "#" for line in comment.splitlines()]
    lines += [f"{name}: {json.dumps(value, separators=(',', ':'))}" for name, value in header.items()]
    lines.append("")
    for key, shape in manifest.shapes.items():
        shape_text = "x".join(str(n) for n in shape) if shape else "-"
        dtype = manifest.dtypes.get(key, default_dtype)
        lines.append(f"{key} {shape_text}" + (f" {dtype}" if dtype != default_dtype else ""))
    return "\n".join(lines) + "\n"


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes differ from what the model expects; the message names every problem."""

    def __init__(
        self,
        what: str,
        missing: Sequence[str],
        unexpected: Sequence[str],
        mismatched: Mapping[str, tuple[Shape, Shape]],
        hint: str = "",
    ):
        self.what = what
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = dict(mismatched)  # key -> (shape in the checkpoint, expected shape)
        problems = []
        if self.missing:
            problems.append(_listing(self.missing, "missing key"))
        if self.unexpected:
            problems.append(_listing(self.unexpected, "unexpected key"))
        if self.mismatched:
            described = [
                f"{key} {_shape_text(found)} instead of {_shape_text(wanted)}"
                for key, (found, wanted) in self.mismatched.items()
            ]
            problems.append(_listing(described, "key with the wrong shape", plural="keys with the wrong shape"))
        message = f"{what} does not match the model: " + "; ".join(problems)
        super().__init__(message + (f" ({hint})" if hint else ""))


def validate_state_dict(
    state_dict_or_shapes: Mapping[str, Any],
    manifest_or_expected_shapes: Manifest | Mapping[str, Sequence[int]],
    what: str,
    *,
    optional: Iterable[str] = (),
) -> None:
    """Raise CheckpointMismatchError naming every missing, unexpected and mis-shaped key.

    The checkpoint side maps keys to tensors (real or `meta`) or to plain shapes (a safetensors header), so a
    file can be checked before its data is read. Keys ending with one of the `optional` suffixes may be
    missing (but must have the right shape when present).
    """
    found = {key: shape_of(value) for key, value in state_dict_or_shapes.items()}
    if isinstance(manifest_or_expected_shapes, Manifest):
        expected = manifest_or_expected_shapes.shapes
    else:
        expected = {key: tuple(int(n) for n in shape) for key, shape in manifest_or_expected_shapes.items()}
    optional = tuple(optional)
    missing = [key for key in expected if key not in found and not (optional and key.endswith(optional))]
    unexpected = [key for key in found if key not in expected]
    mismatched = {
        key: (found[key], expected[key]) for key in expected if key in found and found[key] != expected[key]
    }
    if missing or unexpected or mismatched:
        hint = ""
        if missing and len(missing) == len(expected) and unexpected:
            hint = "none of the expected keys is present: is this the right kind of checkpoint?"
        raise CheckpointMismatchError(what, missing, unexpected, mismatched, hint)


def shape_of(value: Any) -> Shape:
    """The shape of a tensor, a torch.Size, or a sequence of ints."""
    shape = getattr(value, "shape", value)
    return tuple(int(n) for n in shape)


def _listing(items: Sequence[str], noun: str, plural: str | None = None) -> str:
    count = len(items)
    label = noun if count == 1 else (plural or noun + "s")
    shown = ", ".join(items[:MAX_NAMED_KEYS])
    rest = f", ... and {count - MAX_NAMED_KEYS} more" if count > MAX_NAMED_KEYS else ""
    return f"{count} {label} ({shown}{rest})"


def _shape_text(shape: Shape) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def _numel(shape: Shape) -> int:
    count = 1
    for n in shape:
        count *= n
    return count
