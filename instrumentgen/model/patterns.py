"""MusicGen's delay interleaving of K codebooks, its exact inverse, and where values are valid.

Codebook k is shifted right by k frames, so at decoding step t the model predicts frame t of
codebook 0, frame t-1 of codebook 1, ..., and codebook k always sees the coarser codebooks of
its own frame already generated. N frames become T = N + K - 1 steps; the positions a shift
leaves empty hold the special token `card` (one past the last real code):

    frames  N=3, K=3          interleaved T=5
    a0 a1 a2                  a0 a1 a2  S  S
    b0 b1 b2         ->        S b0 b1 b2  S
    c0 c1 c2                   S  S c0 c1 c2
"""

from __future__ import annotations

import torch


def interleaved_length(num_frames: int, n_q: int) -> int:
    """Steps T of the interleaved sequence for N frames and K codebooks: N + K - 1."""
    return num_frames + n_q - 1


def valid_mask(n_q: int, num_frames: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[K, T] bool: True where the interleaved sequence holds a real code (k <= t < k + N)."""
    steps = torch.arange(interleaved_length(num_frames, n_q), device=device)[None, :]
    delays = torch.arange(n_q, device=device)[:, None]
    return (steps >= delays) & (steps < delays + num_frames)


def interleave(codes: torch.Tensor, special: int) -> torch.Tensor:
    """codes [B, K, N] -> [B, K, N + K - 1], codebook k delayed by k steps, `special` elsewhere."""
    batch, n_q, num_frames = codes.shape
    out = codes.new_full((batch, n_q, interleaved_length(num_frames, n_q)), special)
    for k in range(n_q):
        out[:, k, k : k + num_frames] = codes[:, k]
    return out


def deinterleave(sequence: torch.Tensor) -> torch.Tensor:
    """[B, K, T] interleaved -> codes [B, K, T - K + 1]; the exact inverse of `interleave`."""
    _, n_q, steps = sequence.shape
    num_frames = steps - n_q + 1
    if num_frames < 1:
        raise ValueError(f"sequence of {steps} steps is too short for {n_q} codebooks; need at least {n_q}")
    return torch.stack([sequence[:, k, k : k + num_frames] for k in range(n_q)], dim=1)
