"""The learning-rate schedule of the paper: linear warm-up, then cosine annealing to zero."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, max_steps: int) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based).

    Rises linearly from 1/warmup_steps to 1 over the first `warmup_steps` steps, then follows
    half a cosine from 1 at `warmup_steps` to 0 at `max_steps`.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
