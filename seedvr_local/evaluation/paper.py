"""The SeedVR2 paper's published numbers, shown beside a run on a dataset of the same name.

Only values read in the paper itself belong in `PUBLISHED`, each under its dataset, model and metric, exactly as
printed. None are entered yet: the table is empty until someone copies them from the paper's tables, and the
report then says the values are not recorded rather than showing any guess.
"""

from __future__ import annotations

#: The benchmark sets the paper reports on (matched case-insensitively against the dataset folder's name).
PAPER_DATASETS = ("SPMCS", "UDM10", "REDS30", "YouHQ40", "VideoLQ", "AIGC28")
CITATION = (
    "Jianyi Wang et al., \"SeedVR2: One-Step Video Restoration via Diffusion Adversarial Post-Training\", "
    "arXiv:2506.05301"
)
#: dataset -> model ("SeedVR2-3B", "SeedVR2-7B") -> metric -> value, as printed in the paper's tables.
PUBLISHED: dict[str, dict[str, dict[str, float]]] = {}


def paper_dataset(name: str) -> str | None:
    """The paper's spelling of a dataset's name, or None when the paper does not report on it."""
    return next((known for known in PAPER_DATASETS if known.lower() == name.lower()), None)


def paper_values(name: str) -> dict | None:
    """For report.json: the paper's values for this dataset (possibly none recorded) with the citation."""
    dataset = paper_dataset(name)
    if dataset is None:
        return None
    return {"dataset": dataset, "source": CITATION, "values": PUBLISHED.get(dataset, {})}
