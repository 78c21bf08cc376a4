"""Top-k sampling driven by counter-based random numbers, one stream per note.

A shared `torch.Generator` makes a note's tokens depend on which other notes share its batch
and on the device. Here each note has its own integer seed and the uniform for (step, codebook)
is a hash of (seed, step, codebook): the same note samples the same tokens in any batch, on any
replica, CPU or GPU, with or without the KV cache. Pure functions of tensors.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """int64 tensor -> int64 in [0, 2^32): a well-mixed 32-bit hash (lowbias32 by C. Wellons).

    Products are formed in int64 and masked: only their low 32 bits matter, which wrap-around
    keeps exact even where the 64-bit product overflows.
    """
    x = x & _MASK32
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _MASK32
    x = ((x ^ (x >> 15)) * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def mix_seed(*parts: torch.Tensor | int) -> torch.Tensor:
    """Hash several integers (tensors broadcast together) into one 32-bit seed per element."""
    seed = torch.as_tensor(0x9E3779B9, dtype=torch.long)
    for part in parts:
        seed = hash32(seed ^ hash32(torch.as_tensor(part, dtype=torch.long).to(seed.device) + 0x632BE5AB))
    return seed


def uniforms(seeds: torch.Tensor, num_steps: int, n_q: int) -> torch.Tensor:
    """seeds [B] long -> [B, T, K] float64 uniforms in [0, 1): one per (note, step, codebook),
    made in one call before decoding rather than one small hash per step."""
    steps = torch.arange(num_steps, device=seeds.device)
    codebooks = torch.arange(n_q, device=seeds.device)
    return mix_seed(seeds[:, None, None], steps[None, :, None], codebooks[None, None, :]).double() / 2.0**32


def sample_top_k(logits: torch.Tensor, u: torch.Tensor, top_k: int, temperature: float) -> torch.Tensor:
    """logits [B, K, card], u [B, K] uniforms -> tokens [B, K] long.

    `top_k` = 0 keeps every token; `temperature` = 0 or `top_k` = 1 is greedy. Tokens below the
    k-th largest logit get probability 0 (ties with it are kept); the draw inverts the CDF at `u`
    with tokens in vocabulary order, which needs no sort (a sorted top-k costs twice as much on
    CPUs) and depends only on the logits, never on a device's order of equal values.
    """
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.float()
    if 0 < top_k < logits.shape[-1]:
        threshold = logits.topk(top_k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    cdf = torch.softmax(logits / temperature, dim=-1).double().cumsum(dim=-1)
    choice = torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1), right=True)
    return choice.clamp_(max=logits.shape[-1] - 1).squeeze(-1)
