"""`--compile`: torch.compile the repeated blocks of the DiT and the VAE, and let cuDNN autotune its convolutions.

Regional compilation: each DiT block and each VAE ResNet block (the models' `_repeated_blocks`) is compiled on its
own, so the DiT's 32 (3B) or 36 (7B) blocks share a few compiled graphs (one per kind of block and window layout)
instead of the whole model being traced as one. Shapes are static: each new output size (a shape bucket: the
pipeline pads sizes to multiples of 16) compiles its own graphs and autotunes its own convolutions on first use,
which costs seconds to minutes; later requests of that size reuse them. That is why it is off by default: it pays
off for batches and benchmarks of one size, not for a server that sees a new size with every image.
"""

from __future__ import annotations

import torch

from seedvr_local.pipeline import RestorationPipeline

#: Distinct shapes each compiled block keeps graphs for before it falls back to running eagerly.
SHAPE_BUCKETS = 64


def compile_pipeline(pipeline: RestorationPipeline) -> None:
    """Compile the `_repeated_blocks` of `pipeline`'s DiT and VAE in place (diffusers' `compile_repeated_blocks`;
    compiled on first call, per shape). The cache limit and cuDNN autotuning are process settings that diffusers
    leaves to the caller."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, SHAPE_BUCKETS)
    if pipeline.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    pipeline.dit.compile_repeated_blocks(dynamic=False)
    pipeline.vae.compile_repeated_blocks(dynamic=False)
