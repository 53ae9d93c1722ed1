"""What gets installed: one top-level package, and no clash with Hugging Face's `kernels` package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_seedvr_local_alone(tmp_path):
    """kernels/, weights/ and server/ go in as seedvr_local.kernels and so on: a bare `kernels` or `server` in
    site-packages would shadow (or be shadowed by) other distributions."""
    pytest.importorskip("setuptools", reason="--no-build-isolation builds with the environment's setuptools")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [wheel] = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [dist_info] = {name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info")}
        top_level = archive.read(f"{dist_info}/top_level.txt").decode().split()
    assert top_level == ["seedvr_local"]
    outside = [name for name in names if not name.startswith(("seedvr_local/", f"{dist_info}/"))]
    assert outside == []
    for expected in ("seedvr_local/kernels/__init__.py", "seedvr_local/server/routers/health.py",
                     "seedvr_local/weights/tiny.py", "seedvr_local/options.py"):  # fmt: skip
        assert expected in names
    assert any(name.startswith("seedvr_local/weights/manifests/") for name in names)
    licenses = {Path(name).name for name in names if name.startswith(f"{dist_info}/")}
    assert {"LICENSE", "NOTICE"} <= licenses


def test_huggingface_kernels_and_ours_import_together(tmp_path):
    """diffusers, Hugging Face's `kernels` and seedvr_local.kernels in one process (run from a neutral directory,
    as a user's script would: the repository root on sys.path would put our kernels/ folder in its place)."""
    code = (
        "import json, diffusers, kernels, seedvr_local.kernels\n"
        "print(json.dumps([kernels.__file__, seedvr_local.kernels.__file__, hasattr(kernels, 'get_kernel')]))"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    if "No module named 'kernels'" in done.stderr and not os.environ.get("CI"):
        pytest.skip("Hugging Face's kernels package is not installed here (CI installs it: .ci/run)")
    assert done.returncode == 0, done.stderr
    theirs, ours, has_hub_api = json.loads(done.stdout)
    assert not _is_ours(theirs) and has_hub_api  # Hugging Face's, with its hub API
    assert Path(ours).parent.name == "kernels" and Path(ours) != Path(theirs)


def _is_ours(path: str | None) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(ROOT) and ".venv" not in Path(path).parts
