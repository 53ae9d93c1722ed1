"""The server's CPU memory policy, counted in page faults: with freed memory kept, a job after an idle spell
touches memory the process already has, instead of faulting every page back in (and, on a VM with free page
reporting, having the host hand each one back). Counts, not clocks: minor faults from getrusage."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: One small tiny-model job at a time in a worker thread, as the server runs them; the minor page faults of the
#: first job, a warm one, and one after an idle spell.
JOBS = """
import io, json, resource, sys, threading, time
import torch
from PIL import Image
from seedvr_local.device_memory import keep_freed_cpu_memory
from seedvr_local.image_io import decode_image
from seedvr_local.options import UpscaleOptions
from seedvr_local.upscaler import Upscaler

if sys.argv[1] == "keep":
    assert keep_freed_cpu_memory()
upscaler = Upscaler.tiny(device="cpu")
pixels = torch.randint(0, 256, (96, 128, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
buffer = io.BytesIO()
Image.fromarray(pixels.numpy()).save(buffer, format="PNG")
image = decode_image(buffer.getvalue())
faults = {}

def worker():
    for label in ("first", "warm", "after_idle"):
        if label == "after_idle":
            time.sleep(2)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        upscaler.upscale(image, UpscaleOptions(upscale_factor=2.0, seed=0))
        faults[label] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

thread = threading.Thread(target=worker)
thread.start()
thread.join()
print(json.dumps(faults))
"""


def _faults(policy: str) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", JOBS, policy], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator and getrusage page faults")
def test_kept_memory_spares_the_page_faults_of_the_next_job():
    released, kept = _faults("release"), _faults("keep")
    # Released: every job faults its working memory in again, idle or not; the count shows what is at stake.
    assert released["warm"] > 5000 and released["after_idle"] > released["first"] / 2, released
    # Kept: the next job, warm or after the idle spell, reuses what the first one faulted in.
    assert kept["warm"] * 20 < released["warm"] and kept["after_idle"] * 20 < released["after_idle"], (kept, released)


KEPT = """
import torch
from seedvr_local.device_memory import _malloc_free_bytes, keep_freed_cpu_memory

assert keep_freed_cpu_memory()
block = torch.ones(64 * 2**20 // 4)
del block
print(_malloc_free_bytes())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_memory_glibc_keeps_counts_as_available(monkeypatch):
    """Kept memory is this process's to reuse: the planner must not see it as taken (as CUDA's cache)."""
    done = subprocess.run([sys.executable, "-c", KEPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip().splitlines()[-1]) >= 64 * 2**20

    from seedvr_local import device_memory

    monkeypatch.setattr(device_memory, "_meminfo_available", lambda: 1000)
    monkeypatch.setattr(device_memory, "_cgroup_room", lambda: 600)
    monkeypatch.setattr(device_memory, "_malloc_free_bytes", lambda: 24)
    assert device_memory.available_memory("cpu") == 624
