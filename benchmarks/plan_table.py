"""The memory planner's predictions for common GPUs: which model, in which weights format, fits an 8, 12, 16 or
24 GB card at 1080p and 2160p, without offload and with the least offload that fits. Predictions, not
measurements: the numbers are `seedvr-local plan`'s.

    python -m benchmarks.plan_table [--markdown]
"""

from __future__ import annotations

import argparse

from seedvr_local.format_plan import planner_for
from seedvr_local.memory_planner import MemoryPlanError
from seedvr_local.offload_levels import NO_OFFLOAD

GiB = 1024**3
CARDS_GIB = (8, 12, 16, 24)
OUTPUTS = {"1080p": (1920, 1080), "2160p": (3840, 2160)}
FORMATS = ("bf16", "fp8", "Q8_0", "Q4_K_M")
MODELS = ("3b", "7b")


def cell(model: str, fmt: str, card_gib: int, size: tuple[int, int], offload) -> str:
    """"peak GiB" and, with offload, the level it needs; "no" when nothing fits."""
    try:
        plan = planner_for(model, fmt, offload).plan(*size, available=card_gib * GiB)
    except MemoryPlanError:
        return "no"
    level = "" if offload == NO_OFFLOAD else (" resident" if plan.offload == NO_OFFLOAD else f" {plan.offload}")
    return f"{plan.peak_bytes / GiB:.1f}{level}"


def table(offload) -> list[str]:
    header = "| model | format | output | " + " | ".join(f"{c} GB" for c in CARDS_GIB) + " |"
    lines = [header, "|" + "---|" * (3 + len(CARDS_GIB))]
    for model in MODELS:
        for fmt in FORMATS:
            for name, size in OUTPUTS.items():
                cells = [cell(model, fmt, c, size, offload) for c in CARDS_GIB]
                lines.append(f"| {model.upper()} | {fmt} | {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    print("Without offload (peak GiB, or no):\n")
    print("\n".join(table(NO_OFFLOAD)))
    print("\nWith the least offload that fits (peak GiB and the level, or no):\n")
    print("\n".join(table("auto")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
