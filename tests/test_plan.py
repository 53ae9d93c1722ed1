"""`seedvr-local plan` and the planner's knowledge of weights formats and offload, checked against bytes computed
here from the shipped manifests' shapes and the formats' published block layouts."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from seedvr_local.cli import main
from seedvr_local.format_plan import plan_for
from seedvr_local.memory_planner import MemoryPlanner
from seedvr_local.offload_levels import FULL_OFFLOAD, NO_OFFLOAD, ModelWeights
from seedvr_local.weights.manifest import load_manifest

GiB = 1024**3
MiB = 1024**2
PHASES = {"encode", "dit", "decode", "color_fix"}


def _plan(capsys, *argv: str) -> tuple[int, str]:
    code = main(["plan", *argv])
    return code, capsys.readouterr().out


def _json_plan(capsys, *argv: str) -> tuple[int, dict]:
    code, out = _plan(capsys, *argv, "--json")
    return code, json.loads(out)


def _budget(device_memory: int) -> int:
    return int(device_memory * 0.9) - 512 * MiB  # the planner's 10% margin and 512 MiB reserve


def _q8_0_bytes(shape) -> int:
    """GGUF Q8_0: 34 bytes (32 int8 values, an fp16 scale) per 32 weights of a row; vectors and tensors under 1024
    values stay float32, matrices whose rows are not whole blocks float16."""
    count = math.prod(shape)
    if len(shape) < 2 or count < 1024:
        return 4 * count
    if shape[-1] % 32:
        return 2 * count
    return count // 32 * 34


def _vae_bytes() -> int:
    return 2 * load_manifest("ema_vae").num_params  # the VAE in 16 bits


def test_bf16_weights_phase_bytes_are_the_parameter_count_times_two(capsys):
    code, answer = _json_plan(capsys, "--model", "3b", "--device-memory", "80GiB", "--output", "1024x1024",
                              "--offload", "none")  # fmt: skip
    assert code == 0 and answer["fits"] is True
    params = load_manifest("3b").num_params
    assert params == 3_391_476_448
    for phase in PHASES:  # nothing streamed, nothing to dequantise: every weight in every phase
        assert answer["phases"][phase]["weights_bytes"] == 2 * params + _vae_bytes()
    assert answer["settings"]["offload"] == "none" and answer["settings"]["weights_format"] == "bf16"


def test_q8_0_weights_follow_the_block_layout_and_the_dit_phase_adds_one_dequantised_layer(capsys):
    code, answer = _json_plan(capsys, "--model", "7b", "--weights-format", "Q8_0", "--device-memory", "80GiB",
                              "--output", "1024x1024", "--offload", "none")  # fmt: skip
    shapes = load_manifest("7b").shapes.values()
    dit = sum(_q8_0_bytes(s) for s in shapes)
    assert 1.0625 < dit / 8_239_608_232 < 1.07  # 8.5 bits a weight, and the few unquantised tensors
    scratch = 2 * max(math.prod(s) for s in shapes if len(s) == 2 and math.prod(s) >= 1024 and s[-1] % 32 == 0)
    assert answer["phases"]["encode"]["weights_bytes"] == dit + _vae_bytes()
    assert answer["phases"]["dit"]["weights_bytes"] == dit + _vae_bytes() + scratch


def test_full_offload_holds_the_vae_for_its_phases_and_two_blocks_for_the_dit(capsys):
    code, answer = _json_plan(capsys, "--model", "7b", "--weights-format", "bf16", "--device-memory", "24GiB",
                              "--output", "1920x1080", "--offload", "full")  # fmt: skip
    assert code == 0
    shapes = load_manifest("7b").shapes
    block = 2 * sum(math.prod(s) for k, s in shapes.items() if k.startswith("blocks.0."))
    other = 2 * sum(math.prod(s) for k, s in shapes.items() if not k.startswith("blocks."))
    phases = answer["phases"]
    assert phases["encode"]["weights_bytes"] == phases["decode"]["weights_bytes"] == _vae_bytes()
    assert phases["dit"]["weights_bytes"] == other + 2 * block  # the 7B's blocks are all alike
    assert phases["color_fix"]["weights_bytes"] == 0
    assert answer["peak_bytes"] == max(p["peak_bytes"] for p in phases.values())
    assert answer["peak_bytes"] <= _budget(24 * GiB) == answer["budget_bytes"]


def test_auto_picks_the_least_offload_that_fits(capsys):
    code, answer = _json_plan(capsys, "--model", "7b", "--device-memory", "8GiB", "--output", "1920x1080")
    assert code == 0 and answer["fits"]
    chosen = answer["settings"]["offload"]
    assert chosen.startswith("blocks:")
    fewer = f"blocks:{int(chosen.split(':')[1]) - 1}"
    code, less = _json_plan(capsys, "--model", "7b", "--device-memory", "8GiB", "--output", "1920x1080",
                            "--offload", fewer)  # fmt: skip
    assert code == 1 and less["fits"] is False and less["peak_bytes"] > _budget(8 * GiB)


def test_text_answer_lists_each_phase_and_the_settings(capsys):
    code, out = _plan(capsys, "--model", "7b", "--weights-format", "Q4_K_M", "--device-memory", "8GiB",
                      "--output", "1920x1080", "--frames", "5")  # fmt: skip
    _, answer = _json_plan(capsys, "--model", "7b", "--weights-format", "Q4_K_M", "--device-memory", "8GiB",
                           "--output", "1920x1080", "--frames", "5")  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("SeedVR2 7B (Q4_K_M) at 1920x1080, 5 frames on 8.00 GiB: fits, peak ")
    for phase in PHASES:
        peak = answer["phases"][phase]["peak_bytes"] / GiB
        assert any(line.split()[:2] == [phase, f"{peak:.2f}"] for line in lines), phase
    assert f"offload: {answer['settings']['offload']}" in lines and "clip: 5 frames" in lines
    assert set(answer) >= {"fits", "peak_bytes", "phases", "settings"}
    assert set(answer["phases"]) == PHASES and answer["settings"]["clip_frames"] == 5


@pytest.mark.parametrize(
    "argv, change, check",
    [
        (["--model", "7b", "--device-memory", "8GiB", "--output", "1920x1080", "--offload", "none"],
         "it would with --offload blocks:", "--offload"),
        (["--model", "7b", "--device-memory", "1.6GiB", "--output", "512x512", "--offload", "full"],
         "it would with --weights-format fp8", "--weights-format"),
        (["--model", "3b", "--weights-format", "Q4_K_M", "--device-memory", "8GiB", "--output", "1920x1080",
          "--frames", "33"], "it would as clips of 21 frames", "--frames"),
    ],
)  # fmt: skip
def test_a_request_that_cannot_fit_gets_one_line_and_the_smallest_change(capsys, argv, change, check):
    code, out = _plan(capsys, *argv)
    assert code == 1
    assert len(out.strip().splitlines()) == 1 and " does not fit: " in out and change in out
    # the change named does fit, and it is the smallest: one block less offload, or the next longer clip, does not
    value = out.split(change)[1].split()[0] if check == "--offload" else None
    fixed = list(argv)
    if check == "--offload":
        fixed[fixed.index("--offload") + 1] = f"blocks:{value}"
        fewer = f"blocks:{int(value) - 1}"
    elif check == "--weights-format":
        fixed += ["--weights-format", "fp8"]
    else:
        fixed[fixed.index("--frames") + 1] = "21"
    assert _plan(capsys, *fixed)[0] == 0
    if check == "--offload":
        fixed[fixed.index("--offload") + 1] = fewer
        assert _plan(capsys, *fixed)[0] == 1
    if check == "--frames":
        fixed[fixed.index("--frames") + 1] = "25"
        assert _plan(capsys, *fixed)[0] == 1


def test_nothing_fits_says_so_with_exit_code_1(capsys):
    code, answer = _json_plan(capsys, "--model", "3b", "--device-memory", "1GiB", "--output", "1920x1080")
    assert code == 1 and answer["fits"] is False and answer["settings"] is None
    assert answer["peak_bytes"] > answer["budget_bytes"]
    assert answer["suggestion"] is None and "it needs about" in answer["reason"]
    code, out = _plan(capsys, "--model", "3b", "--device-memory", "1GiB", "--output", "1920x1080")
    assert code == 1 and out.strip().endswith("nothing fits, not even the smallest output with every saving")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "7b", "--device-memory", "8", "--output", "1920x1080"], "a size with a unit such as 8GiB"),
        (["--model", "7b", "--device-memory", "8GiB", "--output", "1920"], "expected WIDTHxHEIGHT"),
        (["--model", "7b", "--device-memory", "8GiB", "--output", "64x64", "--frames", "0"], "1 or more"),
        (["--model", "7b", "--device-memory", "8GiB", "--output", "64x64", "--weights-format", "Q1"], "invalid choice"),
        (["--model", "7b", "--device-memory", "8GiB", "--output", "64x64", "--offload", "half"], "must be auto"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2_without_loading_torch(argv, message):
    script = ("import sys, contextlib, io\nfrom seedvr_local.cli import main\nerr = io.StringIO()\n"
              "with contextlib.redirect_stderr(err):\n    try:\n        main(sys.argv[1:])\n"
              "    except SystemExit as e:\n        code = e.code\n"
              "print(code, 'torch' in sys.modules, err.getvalue().strip().splitlines()[-1])")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script, "plan", *argv], capture_output=True, text=True, timeout=60)
    code, torch_loaded, last = done.stdout.split(" ", 2)
    assert (code, torch_loaded) == ("2", "False") and message in last


def test_plan_help_loads_no_torch():
    done = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom seedvr_local.cli import main\ntry:\n    main(['plan', '--help'])\n"
         "except SystemExit:\n    pass\nprint('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "--weights-format" in done.stdout and done.stdout.strip().endswith("False")


def test_max_output_pixels_grows_with_the_offload_the_planner_may_use():
    from seedvr_local.format_plan import phase_costs, planner_for

    budget = _budget(10 * GiB)
    resident = planner_for("3b", "bf16", NO_OFFLOAD).max_output_pixels((16, 9), budget=budget)
    auto = planner_for("3b", "bf16", "auto").max_output_pixels((16, 9), budget=budget)
    assert auto > resident > 0
    # on the CPU host memory is the device's: offload never helps, and auto keeps every weight in place
    weights = ModelWeights((100 * MiB,) * 4, 10 * MiB, 10 * MiB, host_is_device=True)
    planner = MemoryPlanner(phase_costs("3b"), weights=weights)
    assert planner.levels() == [NO_OFFLOAD]
    assert weights.on_device(FULL_OFFLOAD, "dit") == weights.total + 200 * MiB  # the streamed copies count too


def test_plan_for_matches_the_cli_json(capsys):
    _, answer = _json_plan(capsys, "--model", "3b", "--weights-format", "fp8", "--device-memory", "12GiB",
                           "--output", "3840x2160")  # fmt: skip
    direct = plan_for("3b", "fp8", 12 * GiB, 3840, 2160).to_json()
    assert answer == direct and isinstance(torch.__version__, str)


@pytest.mark.slow
def test_the_docs_table_is_what_the_benchmark_prints(capsys):
    from pathlib import Path

    from benchmarks.plan_table import main as plan_table

    assert plan_table([]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    docs = (Path(__file__).resolve().parent.parent / "docs" / "which-gpu.md").read_text()
    assert len(rows) == 2 * (1 + 2 * 4 * 2) and all(row in docs for row in rows)
