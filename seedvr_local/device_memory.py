"""How much memory this process can still get: free device memory (CUDA, or the CPU's RAM under its cgroup
limit, plus what glibc holds freed), and the glibc settings that decide whether freed CPU tensors go back to the
system."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch

MiB = 1024**2

# glibc mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
CPU_MMAP_THRESHOLD = 1 * MiB


def available_memory(device: torch.device | str) -> int:
    """Bytes this process can still allocate on `device`: on CUDA the driver's free memory plus what PyTorch's
    cache holds unused; on the CPU `MemAvailable` (and the cgroup limit, when lower)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    available = _meminfo_available()
    limit = _cgroup_room()
    room = min(available, limit) if limit is not None else available
    return room + _malloc_free_bytes()  # freed but kept by glibc: this process's to reuse, as CUDA's cache is


def use_mmap_for_large_cpu_tensors(threshold: int = CPU_MMAP_THRESHOLD) -> bool:
    """Make glibc serve every CPU allocation of `threshold` bytes or more with its own mmap, returned to the
    system when freed. By default glibc raises that threshold (up to 32 MiB) as large blocks are freed, so the
    many differently sized tile tensors of a tiled VAE land on the heap and fragment it: measured on a 256 x 256
    tiled encode, 0.39 GiB resident instead of 0.10 GiB, at the same speed. Process-wide; the memory planner's CPU
    predictions assume it. Returns False where it is not available (not glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


def keep_freed_cpu_memory() -> bool:
    """Make glibc keep the memory of freed CPU tensors for the next ones instead of returning it to the system:
    every allocation from one heap (M_ARENA_MAX 1, so `available_memory` sees all of it), none from its own mmap
    (M_MMAP_MAX 0; glibc mmaps every block above 32 MiB otherwise, whatever `use_mmap_for_large_cpu_tensors`
    says), the heap never trimmed. Measured with `benchmarks/restore.py`: a warm 256 x 256 job of the full-size
    VAE and a 4-block 3B DiT faults 8 thousand pages instead of 890 thousand, at the same peak resident size.
    Nothing is handed back between jobs, so a VM that returns free guest memory to its host (virtio-balloon free
    page reporting) has nothing to take away while the server is idle. The process keeps its highest resident
    size. Process-wide, for a long-running server; call it before starting threads. Returns False where it is
    not available (not glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
        return all([bool(libc.mallopt(param, value)) for param, value in settings])
    except (OSError, AttributeError):
        return False


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")
    ]  # fmt: skip


def _malloc_free_bytes() -> int:
    """Bytes glibc's main heap holds free (`mallinfo2().fordblks`), 0 where that is unknown."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return 0
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().fordblks)


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit, if one is set."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
