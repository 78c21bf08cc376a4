"""The quantizer benchmark's baseline: `ResidualVectorQuantizer` as it was before issue 22.

Two choices differ from today's, both audiocraft's (`audiocraft/quantization/core_vq.py`): k-means is
plain Lloyd (a start that keeps only itself stays an entry no other row picks), and every dead
entry is re-seeded every step from a row of the batch drawn with replacement (from a 32-row batch,
at most 32 distinct values for hundreds of entries). Run with audiocraft's per-step settings, it
is the "before" of `jobs/benchmarks/quantizer.py`.
"""

from __future__ import annotations

import torch

from instrumentgen.model.quantizer import ResidualVectorQuantizer


class AudiocraftQuantizer(ResidualVectorQuantizer):
    """`ResidualVectorQuantizer` with plain Lloyd and audiocraft's re-seeding (module docstring)."""

    kmeans_splits = False

    def _reseed(self, q: int, dead: torch.Tensor, samples: torch.Tensor, generator: torch.Generator) -> None:
        """Every dead entry [D] <- a row of `samples` drawn with replacement."""
        rows = torch.randint(0, len(samples), (len(dead),), device=samples.device, generator=generator)
        self._restart(q, dead, samples[rows])
