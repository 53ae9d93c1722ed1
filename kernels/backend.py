"""Which implementation the kernel ops run: the Triton kernels or their PyTorch references.

`select("auto")` picks Triton when it is importable and a CUDA GPU is present, else PyTorch. `select("triton")`
insists on the kernels (a clear error when they cannot run), `select("torch")` forces the references. The choice
is logged once, when it is first made (and again only if a later `select` changes it). Until someone calls
`select`, the first op to run resolves `$SEEDVR_KERNELS` (default "auto").

Under `TRITON_INTERPRET=1` (set before triton is imported) the kernels also run on CPU tensors, through Triton's
interpreter: that is how the tests check them on machines without a GPU.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

logger = logging.getLogger(__name__)

MODES = ("auto", "triton", "torch")
ENV_VAR = "SEEDVR_KERNELS"


class KernelBackendError(RuntimeError):
    """The requested backend cannot run on this machine."""


@functools.cache
def triton_version() -> str | None:
    """The installed triton's version, or None when it cannot be imported (it is an optional dependency)."""
    try:
        import triton
    except Exception:  # a broken install (missing libs, wrong arch) counts as absent
        return None
    return getattr(triton, "__version__", "unknown")


def triton_available() -> bool:
    return triton_version() is not None


def interpreter_enabled() -> bool:
    """True when Triton kernels run through its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def cuda_available() -> bool:
    return torch.cuda.is_available()


#: The oldest GPUs Triton compiles for (Volta).
TRITON_MIN_CAPABILITY = (7, 0)


def gpu_capability() -> tuple[int, int]:
    """Compute capability of the current CUDA device."""
    return tuple(torch.cuda.get_device_capability())


def resolve(mode: str) -> tuple[str, str]:
    """`mode` -> (backend, why). Raises ValueError for an unknown mode, KernelBackendError for an impossible one."""
    if mode not in MODES:
        raise ValueError(f"kernels must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "torch":
        return "torch", "asked for"
    has_triton, has_gpu = triton_available(), cuda_available() or interpreter_enabled()
    if mode == "triton":
        if not has_triton:
            raise KernelBackendError(
                "--kernels triton needs the optional triton package (pip install 'seedvr-local[triton]')"
            )
        if not has_gpu:
            raise KernelBackendError("--kernels triton needs a CUDA GPU (or TRITON_INTERPRET=1 for testing)")
        if cuda_available() and gpu_capability() < TRITON_MIN_CAPABILITY:
            raise KernelBackendError(f"--kernels triton needs a GPU of compute capability 7.0 or newer, this one is "
                                     f"{'.'.join(map(str, gpu_capability()))}")  # fmt: skip
        return "triton", "asked for"
    if not has_triton:
        return "torch", "auto: triton not installed"
    if not cuda_available():
        return "torch", "auto: no CUDA GPU"
    if gpu_capability() < TRITON_MIN_CAPABILITY:
        return "torch", f"auto: GPU compute capability {'.'.join(map(str, gpu_capability()))} is below Triton's 7.0"
    return "triton", f"auto: CUDA and triton {triton_version()} available"


_active: str | None = None


def select(mode: str = "auto") -> str:
    """Set the backend from `auto|triton|torch`; returns the one in force ("triton" or "torch")."""
    global _active
    backend, why = resolve(mode)
    if backend != _active:
        logger.info("kernels: %s (%s)", backend, why)
    _active = backend
    return backend


def active_backend() -> str:
    """The backend in force, resolving `$SEEDVR_KERNELS` (default auto) on first use."""
    if _active is None:
        return select(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto")
    return _active


def reset() -> None:
    """Forget the choice (the next op resolves it again); for tests."""
    global _active
    _active = None


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether an op on these tensors runs its Triton kernel: the triton backend is in force, the tensors are on
    a CUDA device (or on the CPU under the interpreter) and torch.compile is not tracing (inductor fuses the
    PyTorch references itself, and an opaque kernel launch would break its graph)."""
    if active_backend() != "triton" or torch.compiler.is_compiling():
        return False
    devices = {t.device.type for t in tensors}
    if devices == {"cuda"}:
        return True
    return devices == {"cpu"} and interpreter_enabled()
