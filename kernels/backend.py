"""Which implementation the kernel ops run, the Triton kernels or their PyTorch references: a choice per model.

A model whose forward runs kernel ops mixes in `ModelBackends` and decorates its entry points with
`@runs_kernels`. `model.set_kernel_backend("auto" | "triton" | "torch")` resolves the mode for the device the model
is on and logs the choice; a model that was never set resolves `$SEEDVR_KERNELS` (default "auto") on its first
call. The choice is resolved once, and again only when the model moves to another device or dtype. While a
decorated method runs, the ops it calls (however deep) use that model's backend; outside any model call they run
the references. There is no process-wide choice: two models may run different backends, even in two threads.

`auto` picks Triton when it is importable and the model is on a CUDA GPU of compute capability 7.0 or newer, else
PyTorch. `triton` insists on the kernels (a clear error when they cannot run), `torch` forces the references.

Under `TRITON_INTERPRET=1` (set before triton is imported) the kernels also run on CPU tensors, through Triton's
interpreter: that is how the tests check them on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
from typing import Callable, Iterator, TypeVar

import torch

from seedvr_local import devices

logger = logging.getLogger(__name__)

MODES = ("auto", "triton", "torch")
ENV_VAR = "SEEDVR_KERNELS"
#: The oldest GPUs Triton compiles for (Volta).
TRITON_MIN_CAPABILITY = (7, 0)


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


def requested_mode() -> str:
    """The mode `$SEEDVR_KERNELS` asks for (default "auto"): what a model runs until it is set otherwise."""
    return os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"


def resolve(mode: str, device: torch.device) -> tuple[str, str]:
    """`mode` for a model on `device` -> (backend, why). Raises ValueError for an unknown mode,
    KernelBackendError for one this machine cannot run."""
    if mode not in MODES:
        raise ValueError(f"kernels must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "torch":
        return "torch", "asked for"
    on_gpu = device.type == "cuda"
    capability = devices.cuda_capability(device) if on_gpu else None
    if mode == "triton":
        if not triton_available():
            raise KernelBackendError(
                "--kernels triton needs the optional triton package (pip install 'seedvr-local[triton]')"
            )
        if not (on_gpu or interpreter_enabled()):
            raise KernelBackendError("--kernels triton needs a CUDA GPU (or TRITON_INTERPRET=1 for testing)")
        if on_gpu and capability < TRITON_MIN_CAPABILITY:
            raise KernelBackendError(f"--kernels triton needs a GPU of compute capability 7.0 or newer, this one is "
                                     f"{'.'.join(map(str, capability))}")  # fmt: skip
        return "triton", "asked for"
    if not triton_available():
        return "torch", "auto: triton not installed"
    if not on_gpu:
        return "torch", f"auto: the model is on {device.type}, not a CUDA GPU"
    if capability < TRITON_MIN_CAPABILITY:
        return "torch", f"auto: GPU compute capability {'.'.join(map(str, capability))} is below Triton's 7.0"
    return "triton", f"auto: CUDA and triton {triton_version()} available"


# The backend of the model call in progress; "torch" outside any: the references need no setup.
_in_use: contextvars.ContextVar[str] = contextvars.ContextVar("seedvr_kernel_backend", default="torch")


@contextlib.contextmanager
def use(backend: str) -> Iterator[None]:
    """Run the kernel ops inside with `backend` ("triton" or "torch", as `resolve` returns it)."""
    token = _in_use.set(backend)
    try:
        yield
    finally:
        _in_use.reset(token)


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether an op on these tensors runs its Triton kernel: torch.compile is not tracing (inductor fuses the
    PyTorch references itself, and an opaque kernel launch would break its graph; checked first, so a compiled
    graph never reads the context), the calling model runs the triton backend, and the tensors are on a CUDA
    device (or on the CPU under the interpreter)."""
    if torch.compiler.is_compiling() or _in_use.get() != "triton":
        return False
    devices = {t.device.type for t in tensors}
    if devices == {"cuda"}:
        return True
    return devices == {"cpu"} and interpreter_enabled()


class ModelBackends:
    """Mixed into a `ModelMixin`: backends chosen once per model, for the device and dtype it is on.

    Each kind of backend ("kernels" here; a model may add its own, as NaDiT does for its window attention) is a
    requested mode and a resolver `(mode, device, dtype) -> (backend, why)`. The resolution is cached per model
    and redone only when the request changes or the model moves to another device or dtype; each new choice is
    logged once.
    """

    def set_kernel_backend(self, mode: str) -> str:
        """`auto`, `triton` or `torch` -> the backend this model now runs ("triton" or "torch"). Raises
        ValueError for an unknown mode, KernelBackendError for one that cannot run where the model is."""
        return self._set_backend("kernels", mode)

    @property
    def kernel_backend(self) -> str:
        """The kernel backend in force for this model where it is now ("triton" or "torch")."""
        return self._backend("kernels")

    def _backend_resolvers(self) -> dict[str, tuple[Callable[[], str], Callable[..., tuple[str, str]]]]:
        """kind -> (the default request, its resolver)."""
        return {"kernels": (requested_mode, lambda mode, device, dtype: resolve(mode, device))}

    def _set_backend(self, kind: str, mode: str) -> str:
        backend = self._resolved(kind, mode)  # raises before anything changes
        self.__dict__.setdefault("_backend_requests", {})[kind] = mode
        return backend

    def _backend(self, kind: str) -> str:
        default, _ = self._backend_resolvers()[kind]
        return self._resolved(kind, self.__dict__.get("_backend_requests", {}).get(kind) or default())

    def _resolved(self, kind: str, mode: str) -> str:
        key = (mode, self.device, self.dtype)
        choices = self.__dict__.setdefault("_backend_choices", {})
        if kind not in choices or choices[kind][0] != key:
            _, resolver = self._backend_resolvers()[kind]
            backend, why = resolver(*key)
            if kind not in choices or choices[kind][1] != backend:
                logger.info("%s %s: %s (%s)", type(self).__name__, kind, backend, why)
            choices[kind] = (key, backend)
        return choices[kind][1]


Method = TypeVar("Method", bound=Callable)


def runs_kernels(method: Method) -> Method:
    """Decorates a method of a `ModelBackends` model: the kernel ops it runs use the model's kernel backend."""

    @functools.wraps(method)
    def with_backend(self, *args, **kwargs):
        with use(self.kernel_backend):
            return method(self, *args, **kwargs)

    return with_backend  # type: ignore[return-value]
