"""A strict reader of the Prometheus text exposition format (0.0.4), for the /metrics tests: every line must be
valid, every sample belong to a family declared once (HELP and TYPE before its samples), and every histogram be
well formed (cumulative buckets in increasing order, ending in +Inf equal to its _count)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
SAMPLE = re.compile(rf"^({NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*)?\}})? (\S+)$")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


@dataclass
class Family:
    name: str
    type: str
    help: str
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)


def parse(text: str) -> dict[str, Family]:
    """The families of `text`; AssertionError naming the first line that breaks the format's rules."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, Family] = {}
    helps: dict[str, str] = {}
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {number}: {line!r}"
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(NAME, name) and help_text, where
            assert name not in helps, f"{where}: a second HELP"
            helps[name] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert re.fullmatch(NAME, name) and kind in TYPES, where
            assert name not in families, f"{where}: a second TYPE"
            assert name in helps, f"{where}: TYPE before its HELP"
            families[name] = Family(name, kind, helps[name])
        else:
            match = SAMPLE.match(line)
            assert match, f"{where}: not a sample"
            name, value = match.group(1), _value(match.group(len(match.groups())), where)
            labels = tuple(re.findall(LABEL, match.group(2) or ""))
            assert len({key for key, _ in labels}) == len(labels), f"{where}: a label twice"
            family = families.get(name) or _histogram_of(families, name)
            assert family is not None, f"{where}: a sample of no declared family"
            assert family is list(families.values())[-1], f"{where}: its family's samples are not together"
            assert (name, labels) not in family.samples, f"{where}: the same series twice"
            if family.type == "counter":
                assert name.endswith("_total") and value >= 0, f"{where}: a counter"
            family.samples[(name, labels)] = value
    for family in families.values():
        if family.type == "histogram":
            check_histogram(family)
    return families


def _value(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise AssertionError(f"{where}: {text!r} is not a number") from None


def _histogram_of(families: dict[str, Family], name: str) -> Family | None:
    for suffix in ("_bucket", "_sum", "_count"):
        family = families.get(name.removesuffix(suffix)) if name.endswith(suffix) else None
        if family is not None and family.type == "histogram":
            return family
    return None


def check_histogram(family: Family) -> None:
    """Per label set: buckets with increasing `le`, cumulative counts, the last +Inf and equal to _count; a _sum."""
    series: dict[tuple, list[tuple[float, float]]] = {}
    for (name, labels), value in family.samples.items():
        if name == f"{family.name}_bucket":
            rest = tuple(label for label in labels if label[0] != "le")
            bound = dict(labels)["le"]
            series.setdefault(rest, []).append((float(bound), value))
    sums_and_counts = {labels for name, labels in family.samples if not name.endswith("_bucket")}
    assert sums_and_counts == set(series), f"{family.name}: _sum/_count without buckets, or buckets without them"
    for labels, buckets in series.items():
        bounds = [bound for bound, _ in buckets]
        assert bounds == sorted(set(bounds)) and math.isinf(bounds[-1]), f"{family.name}{labels}: bounds {bounds}"
        counts = [count for _, count in buckets]
        assert counts == sorted(counts), f"{family.name}{labels}: buckets not cumulative: {counts}"
        total = family.samples[(f"{family.name}_count", labels)]
        assert counts[-1] == total, f"{family.name}{labels}: +Inf {counts[-1]} != _count {total}"
        assert (f"{family.name}_sum", labels) in family.samples, f"{family.name}{labels}: no _sum"


def value(families: dict[str, Family], name: str, **labels: str) -> float | None:
    """The sample `name` whose labels include `labels` (None when there is none; AssertionError when several)."""
    family = families.get(name) or _histogram_of(families, name)
    if family is None:
        return None
    found = [v for (n, ls), v in family.samples.items() if n == name and labels.items() <= dict(ls).items()]
    assert len(found) <= 1, f"{name}{labels}: {len(found)} samples"
    return found[0] if found else None
