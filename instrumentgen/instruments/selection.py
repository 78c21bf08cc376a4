"""Consistency selection: k candidate notes per slot, keep the ones that sound most like one instrument.

Each slot (pitch, velocity) is generated k times, with the candidate seeds of `candidate_seeds`
(candidate 0 is the instrument's own seed, so k = 1 is plain generation). Every candidate is
described by its TC feature, the liftered log-mel of `metrics/tc.py` ([M, frames] per note,
flattened). The selection keeps, per slot, the candidate nearest in L1 to the elementwise median
feature of all candidates, then once more against the median of the notes it kept. The Serve
application and the batch render job both call `select_candidates`.
"""

from __future__ import annotations

import torch

from instrumentgen.errors import UserError
from instrumentgen.model.sampling import mix_seed

CANDIDATE_STREAM = 0x5E1EC7  # keeps candidate seeds apart from every other use of mix_seed
SELECTION_ROUNDS = 2  # median of all candidates, then the median of the first choice


class SelectionError(UserError):
    """Candidates that cannot be compared; names the shape and what is allowed."""


def candidate_seeds(seed: int, candidates: int) -> list[int]:
    """The instrument seeds of `candidates` candidates: `seed` itself first, then derived ones."""
    if candidates < 1:
        raise SelectionError(f"candidates={candidates} is not allowed; allowed: 1 or more")
    derived = mix_seed(CANDIDATE_STREAM, seed, torch.arange(1, candidates)).tolist()
    return [seed, *derived]


def select_candidates(features: torch.Tensor, rounds: int = SELECTION_ROUNDS) -> torch.Tensor:
    """features [C, S, F] (C candidates of S slots) -> chosen [S] long: the candidate kept per slot.

    Round 1 compares every candidate with the median over all C * S features; each further round
    with the median over the S features chosen in the round before. Ties go to the lower candidate.
    """
    if features.dim() != 3 or 0 in features.shape:
        raise SelectionError(f"features of shape {tuple(features.shape)}; allowed: [C, S, F], all non-empty")
    count, slots, _ = features.shape
    reference = features.reshape(count * slots, -1).median(dim=0).values  # [F]
    chosen = torch.zeros(slots, dtype=torch.long)
    for _ in range(rounds):
        distances = (features - reference).abs().sum(dim=-1)  # [C, S]
        chosen = distances.argmin(dim=0)
        reference = features[chosen, torch.arange(slots)].median(dim=0).values
    return chosen
