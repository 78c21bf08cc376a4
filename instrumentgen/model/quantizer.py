"""Residual vector quantization of the CLAP embedding, audiocraft's way (`audiocraft/quantization/core_vq.py`).

Q codebooks of `bins` entries; codebook q quantizes what codebooks 0..q-1 left (the residual).
The codebooks are not learned by gradient: they are buffers, moved in training mode only by
exponential moving averages (decay `rvq_decay` per `bins` rows) of how many residuals each entry
took (`cluster_sizes`) and of their sum (`embedding_sums`), an entry being their ratio. Each
codebook starts as the k-means centroids (`rvq_kmeans_iters` iterations) of the residuals of a
sample of the training set (`initialize`; else of the first training batch it sees), a cluster
left with under a quarter of an even share split off a large one (`split_small_clusters`). An
entry whose usage, counted over its own window (`usage`, decay `rvq_usage_decay`), falls below
`rvq_dead_code_threshold` of an even share is re-seeded from a distinct residual of the current
batch. audiocraft writes the re-seeded entry into the codebook only, which its EMA update
overwrites in the same step; here the EMA statistics are re-seeded with it, so the restart
takes effect.

Across workers the statistics must be those of the global batch, or each worker's codebooks
drift to its own data. The quantizer's input is a frozen CLAP embedding [B, 512], so every
training forward all-gathers it (B x 512 floats per worker) and every worker computes the codes
and EMA statistics of the global batch itself: the same numbers as an all-reduce of the
statistics (Q x bins x 513 floats: 25 MB per step at 12 x 1024, against 64 KB for the inputs
of a global batch of 32), one collective per step. Random choices (k-means starts, dead-code
seeds) come from a generator seeded by the update count, a buffer like the statistics: the same
draw on every worker without a broadcast, the same after a resume, and the training's own random
streams untouched. This holds under DDP and every DeepSpeed ZeRO stage (buffers are never partitioned), without
relying on DDP's buffer broadcast, which DeepSpeed does not have.

The output carries the quantized value forward and the gradient straight through to the input;
the commitment loss ||x - sg(quantized)||^2 (audiocraft's weight 1, mean over codebooks) has no
gradient here (the input is frozen) and audiocraft's CLAP conditioner drops it from the LM loss:
it is reported as the quantization error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

EPSILON = 1e-5  # audiocraft's Laplace smoothing of the cluster sizes
# k-means: a cluster holding less than this share of an even share (N / C samples), or fewer than 2
# samples, is split off a large one (`split_small_clusters`).
MIN_CLUSTER_SHARE = 0.25
SPLIT_STEP = 0.1  # how far apart the two halves of a split start, in rms sample-to-mean distances


@dataclass
class CodeUsage:
    """How a set of embeddings uses each codebook: perplexity [Q] (exp of the code entropy,
    1 = one entry for everything, bins = uniform) and live [Q] long (entries used at least once)."""

    perplexity: torch.Tensor
    live: torch.Tensor


def code_usage_from_counts(counts: torch.Tensor) -> CodeUsage:
    """counts [Q, bins] (how often each entry was chosen) -> CodeUsage."""
    counts = counts.double()
    probs = counts / counts.sum(dim=-1, keepdim=True).clamp(min=1.0)
    entropy = -(probs * probs.clamp(min=1e-30).log()).sum(dim=-1)
    return CodeUsage(entropy.exp().float(), (counts > 0).sum(dim=-1))


def code_counts(codes: torch.Tensor, bins: int) -> torch.Tensor:
    """codes [B, Q] long -> counts [Q, bins] float."""
    return F.one_hot(codes.T, bins).sum(dim=1).float()


def nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """x [N, D], codebook [C, D] -> index [N] long of the nearest entry (squared Euclidean)."""
    distances = x.pow(2).sum(1, keepdim=True) - 2 * x @ codebook.T + codebook.pow(2).sum(1)[None]
    return distances.argmin(dim=-1)


def kmeans(
    samples: torch.Tensor,
    start: torch.Tensor,
    iters: int,
    generator: torch.Generator | None = None,
    split: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """samples [N, D], start [C] long (the samples the C means start from) -> (means [C, D], counts [C]
    of the samples nearest each final mean).

    Lloyd's iterations. After each but the last, a cluster holding less than `MIN_CLUSTER_SHARE` of
    an even share of the samples is split off one of the largest (`split_small_clusters`): on
    noise-like data (the residual a deep codebook sees) a start in 512 dimensions is nearer to
    itself than any mean is, so plain Lloyd leaves most starts holding only themselves, entries no
    held-out row ever picks (`split=False`: plain Lloyd, a cluster left empty keeps its mean, as
    audiocraft's k-means). Sums through a one-hot matmul, not scatter_add, so that the same input
    gives the same means on every GPU.
    """
    means = samples[start]
    for iteration in range(iters):
        onehot = F.one_hot(nearest(samples, means), len(start)).to(samples.dtype)  # [N, C]
        counts = onehot.sum(0)
        means = torch.where(counts[:, None] > 0, onehot.T @ samples / counts.clamp(min=1)[:, None], means)
        if split and iteration < iters - 1:
            means = split_small_clusters(samples, means, counts, generator)
    counts = F.one_hot(nearest(samples, means), len(start)).to(samples.dtype).sum(0)
    return means, counts


def min_cluster(samples: int, clusters: int) -> float:
    """The fewest samples a k-means cluster may keep: `MIN_CLUSTER_SHARE` of an even share, at least 2."""
    return max(2.0, MIN_CLUSTER_SHARE * samples / clusters)


def split_small_clusters(
    samples: torch.Tensor, means: torch.Tensor, counts: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """means [C, D] with counts [C] -> means where each cluster of fewer than `min_cluster(N, C)`
    samples takes the place of a half of one of the largest clusters: that mean moved by +d, the small one
    at its mean - d, |d| a tenth of the rms distance of the samples to their nearest mean, d's
    direction random (faiss's treatment of empty clusters, here also of singletons)."""
    small = (counts < min_cluster(len(samples), len(means))).nonzero().flatten()
    if len(small) == 0:
        return means
    large = counts.argsort(descending=True)[: len(small)]
    small = small[: len(large)]
    rms = (samples - means[nearest(samples, means)]).pow(2).sum(-1).mean().sqrt()
    step = torch.randn(len(small), samples.shape[1], device=samples.device, generator=generator)
    step = F.normalize(step, dim=-1) * rms * SPLIT_STEP
    means = means.clone()
    means[small] = means[large] - step
    means[large] = means[large] + step
    return means


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """x [B, D] on each worker -> (every worker's rows [W * B, D] in rank order, this worker's slice)."""
    if not _distributed():
        return x, slice(0, len(x))
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    rank = dist.get_rank()
    return torch.cat(parts), slice(rank * len(x), (rank + 1) * len(x))


class ResidualVectorQuantizer(nn.Module):
    """x [B, E] -> (quantized [B, E], codes [B, Q] long, commitment loss scalar); see the module docstring.

    decay: the codebooks' EMA decay per `bins` rows of the global batch (a step of B rows decays by
    decay ** (B / bins)); dead_code_threshold: the usage, in units of an even share (1 = the entry
    takes 1/bins of the rows), below which an entry is re-seeded (0: never); usage_decay: the decay
    per `bins` rows of that usage (the window it is counted over; default `decay`).
    """

    kmeans_splits = True  # k-means splits small clusters off large ones (`kmeans`)

    def __init__(
        self,
        dim: int,
        num_codebooks: int,
        bins: int,
        decay: float,
        kmeans_iters: int,
        dead_code_threshold: float,
        usage_decay: float | None = None,
    ):
        super().__init__()
        self.bins, self.decay, self.kmeans_iters = bins, decay, kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.usage_decay = decay if usage_decay is None else usage_decay
        # Until k-means replaces them (`initialize`, or the first training batch), entries of norm ~1
        # like CLAP's unit embeddings, so that an untrained model still tells embeddings apart.
        self.register_buffer("codebooks", torch.randn(num_codebooks, bins, dim) / dim**0.5)
        # EMA usage of each entry in rows per `bins` rows (1 = an even share) and of the sum of those rows.
        self.register_buffer("cluster_sizes", torch.zeros(num_codebooks, bins))
        self.register_buffer("embedding_sums", torch.zeros(num_codebooks, bins, dim))
        # EMA usage of each entry over the dead-code window (decay `usage_decay`), in the same units.
        self.register_buffer("usage", torch.zeros(num_codebooks, bins))
        self.register_buffer("initialized", torch.zeros(num_codebooks, dtype=torch.bool))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # training batches seen: seeds the draws
        # Entries re-seeded by the last training step, per codebook [Q] (for metrics; not saved).
        self.register_buffer("reseeds", torch.zeros(num_codebooks, dtype=torch.long), persistent=False)

    def _generator(self, q: int, device: torch.device) -> torch.Generator:
        """The same generator on every worker and after a resume (seeded by `updates` and q)."""
        return torch.Generator(device=device).manual_seed(int(self.updates) * 1_000 + q)

    def _starts(self, high: int, generator: torch.Generator) -> torch.Tensor:
        """[bins] long indices in [0, high): distinct when high >= bins."""
        if high >= self.bins:
            return torch.randperm(high, device=generator.device, generator=generator)[: self.bins]
        return torch.randint(0, high, (self.bins,), device=generator.device, generator=generator)

    def _apply(self, fn, recurse=True):
        # Statistics stay fp32 under .half() / .bfloat16() (DeepSpeed bf16): a 0.99 decay needs the mantissa.
        super()._apply(fn, recurse)
        for name, buffer in self._buffers.items():
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != torch.float32:
                self._buffers[name] = buffer.float()
        return self

    @torch.no_grad()
    def initialize(self, sample: torch.Tensor) -> None:
        """Every codebook <- the k-means centroids (`kmeans_iters` Lloyd iterations) of the residuals
        that the codebooks before it leave of `sample` [N, E] (the same on every worker), and its EMA
        statistics <- the clusters' shares of the sample. Training calls it once, before the first
        step, with tens of thousands of the training set's embeddings (`training/clap_sample.py`)."""
        residual = sample.float().to(self.codebooks.device)
        for q in range(len(self.codebooks)):
            self._kmeans_init(q, residual)
            residual = residual - self.codebooks[q][nearest(residual, self.codebooks[q])]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """In training mode the codebooks are updated from the global batch (every worker must call
        it with the same B; a codebook not yet initialised starts from this batch); in eval mode
        they are only read."""
        if self.training:
            with torch.no_grad():
                samples, mine = _gather_rows(x.detach().float())
                quantized, codes, layer_inputs, chosen = self._quantize(samples, update=True)
                self.updates += 1
            quantized, codes = quantized[mine], codes[mine]
            layer_inputs, chosen = layer_inputs[:, mine], chosen[:, mine]
        else:
            quantized, codes, layer_inputs, chosen = self._quantize(x.detach().float(), update=False)
        commitment = F.mse_loss(layer_inputs, chosen)
        quantized = quantized.to(x.dtype)
        return x + (quantized - x).detach(), codes, commitment

    @torch.no_grad()
    def _quantize(self, x: torch.Tensor, update: bool) -> tuple[torch.Tensor, ...]:
        """x [N, E] fp32 -> (quantized [N, E], codes [N, Q], each codebook's input [Q, N, E] and
        chosen entries [Q, N, E], as they were before this batch's update)."""
        residual, quantized, codes, inputs, entries = x, torch.zeros_like(x), [], [], []
        for q in range(len(self.codebooks)):
            if update and not self.initialized[q]:
                self._kmeans_init(q, residual)
            index = nearest(residual, self.codebooks[q])
            chosen = self.codebooks[q][index]
            inputs.append(residual)
            entries.append(chosen)
            codes.append(index)
            if update:
                self._ema_update(q, residual, index)
            quantized, residual = quantized + chosen, residual - chosen
        return quantized, torch.stack(codes, dim=-1), torch.stack(inputs), torch.stack(entries)

    def _kmeans_init(self, q: int, samples: torch.Tensor) -> None:
        generator = self._generator(q, samples.device)
        start = self._starts(len(samples), generator)
        means, counts = kmeans(samples, start, self.kmeans_iters, generator, self.kmeans_splits)
        if _distributed():  # the same input everywhere; rank 0's result guards against kernel nondeterminism
            dist.broadcast(means, src=0)
            dist.broadcast(counts, src=0)
        shares = counts * (self.bins / len(samples))
        self.codebooks[q] = means
        self.cluster_sizes[q] = shares
        self.usage[q] = shares
        self.embedding_sums[q] = means * shares[:, None]
        self.initialized[q] = True

    def _ema_update(self, q: int, samples: torch.Tensor, index: torch.Tensor) -> None:
        """One step of N rows: the codebook EMAs decay by decay ** (N / bins) towards this batch's
        usage and sums (per `bins` rows), the usage EMA by usage_decay ** (N / bins); entries whose
        usage falls below the threshold are re-seeded."""
        per_bins = self.bins / len(samples)
        weight = 1 - self.decay ** (len(samples) / self.bins)
        onehot = F.one_hot(index, self.bins).float()  # [N, bins]
        self.cluster_sizes[q].lerp_(onehot.sum(0) * per_bins, weight)
        self.usage[q].lerp_(onehot.sum(0) * per_bins, 1 - self.usage_decay ** (len(samples) / self.bins))
        self.embedding_sums[q].lerp_(onehot.T @ samples * per_bins, weight)
        total = self.cluster_sizes[q].sum()
        smoothed = (self.cluster_sizes[q] + EPSILON) / (total + self.bins * EPSILON) * total
        self.codebooks[q] = self.embedding_sums[q] / smoothed[:, None]
        dead = (self.usage[q] < self.dead_code_threshold).nonzero().flatten()
        self.reseeds[q] = 0
        if self.dead_code_threshold > 0 and len(dead):  # identical buffers: every worker takes this branch
            self._reseed(q, dead, samples, self._generator(q, samples.device))

    def _reseed(self, q: int, dead: torch.Tensor, samples: torch.Tensor, generator: torch.Generator) -> None:
        """Re-seed entries `dead` [D] long of codebook q from rows of `samples` [N, E]. Each takes a
        different row, so two never start equal (the one listed second would never be chosen); dead
        entries beyond the batch's rows wait for the next steps. A re-seeded entry starts at an even
        share (or the threshold, if higher): a window's worth of steps to be chosen before it can
        count as dead again."""
        count = min(len(dead), len(samples))
        dead = dead[torch.randperm(len(dead), device=samples.device, generator=generator)[:count]]
        seeds = samples[torch.randperm(len(samples), device=samples.device, generator=generator)[:count]]
        self._restart(q, dead, seeds)

    def _restart(self, q: int, entries: torch.Tensor, seeds: torch.Tensor) -> None:
        """Entries [D] long of codebook q <- seeds [D, E], their statistics with them (see `_reseed`)."""
        restart = max(1.0, self.dead_code_threshold)
        self.codebooks[q, entries] = seeds
        self.embedding_sums[q, entries] = seeds * restart
        self.cluster_sizes[q, entries] = restart
        self.usage[q, entries] = restart
        self.reseeds[q] = len(entries)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, E] -> codes [B, Q] long, never updating the codebooks."""
        return self._quantize(x.float(), update=False)[1]

    def code_usage(self, x: torch.Tensor) -> CodeUsage:
        """How the embeddings x [B, E] use each codebook (perplexity and live entries, [Q] each)."""
        return code_usage_from_counts(code_counts(self.encode(x), self.bins))
