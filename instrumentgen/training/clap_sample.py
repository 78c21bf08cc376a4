"""The sample of training CLAP embeddings that the quantizer's k-means starts from.

Before the first step of a fresh run, every worker reads its whole shard of the train split once
(in the shard's fixed order, no shuffle), keeps `rvq_init_samples / workers` of its rows chosen
by a generator seeded with the run's seed, and the workers all-gather them: every worker then
holds the same sample [N, 512] fp32 and computes the same k-means (rank 0's result is broadcast
against kernel nondeterminism, `ResidualVectorQuantizer.initialize`). A resumed run reads its
codebooks from the checkpoint instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from instrumentgen.data.shards import _stack

READ_ROWS = 1024  # rows per batch of the pass over the shard


def clap_sample(shard, size: int, world_size: int, seed: int, device: torch.device) -> torch.Tensor:
    """`shard` (anything with Ray Data's `iter_batches`) -> the global sample [N, 512] fp32 on `device`,
    N = min(size, workers x the smallest shard's rows), the same on every worker."""
    embeddings = np.concatenate(
        [
            _stack(batch["clap_embedding"]).astype(np.float32)
            for batch in shard.iter_batches(batch_size=READ_ROWS, batch_format="numpy")
        ]
    )
    rows = torch.tensor([len(embeddings)], device=device)
    if dist.is_initialized():
        dist.all_reduce(rows, op=dist.ReduceOp.MIN)
    take = min(math.ceil(size / world_size), int(rows.item()))
    chosen = np.sort(np.random.default_rng(seed).permutation(len(embeddings))[:take])
    mine = torch.from_numpy(embeddings[chosen]).to(device)
    if not dist.is_initialized() or world_size == 1:
        return mine
    parts = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(parts, mine)
    return torch.cat(parts)
