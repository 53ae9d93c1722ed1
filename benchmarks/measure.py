"""Peak memory per phase: CUDA max-allocated, or the process RSS on the CPU (sampled every few ms); and what a
phase cost the process in CPU time and page faults."""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass, fields

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size of this process (Linux), 0 where /proc is unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


class PeakMemory:
    """`reset()` starts a window; `peak()` is the highest memory use seen since. On CUDA this is the caching
    allocator's max allocated bytes (what the model needs), on the CPU the sampled RSS (what the OS sees)."""

    def __init__(self, device: torch.device, interval_s: float = 0.002):
        self.cuda = device.type == "cuda"
        self.device = device
        self._peak = 0
        self._stop = threading.Event()
        self._thread = None
        if not self.cuda:
            self._thread = threading.Thread(target=self._sample, args=(interval_s,), daemon=True)
            self._thread.start()

    def _sample(self, interval_s: float) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_bytes())
            time.sleep(interval_s)

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._peak = rss_bytes()

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        self._peak = max(self._peak, rss_bytes())
        return self._peak

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def gib(n: int) -> float:
    return n / 2**30


@dataclass(frozen=True)
class Usage:
    """What the whole process (every thread) used: wall, user and system seconds, minor and major page faults.
    `Usage.now() - earlier` is what happened in between."""

    wall_s: float
    user_s: float
    system_s: float
    minor_faults: int
    major_faults: int

    @classmethod
    def now(cls) -> "Usage":
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(time.perf_counter(), usage.ru_utime, usage.ru_stime, usage.ru_minflt, usage.ru_majflt)

    def __sub__(self, other: "Usage") -> "Usage":
        return Usage(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    @classmethod
    def zero(cls) -> "Usage":
        return cls(0.0, 0.0, 0.0, 0, 0)

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))
