"""CLAP score: how well generated notes match their cue, in CLAP's joint embedding space.

    CLAP score = mean over notes of cos(e_cue, e_note)

e_cue is the text embedding of the prompt (or the audio embedding of a reference / the fixed cue
of a test instrument), e_note the CLAP audio embedding of each generated note.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clap_score(cue_embedding: torch.Tensor, note_embeddings: torch.Tensor) -> float:
    """cue [512] (or [1, 512]), notes [B, 512] -> mean cosine similarity in [-1, 1]."""
    cue = cue_embedding.reshape(1, -1).float()
    notes = note_embeddings.float()
    if notes.dim() != 2 or notes.shape[1] != cue.shape[1] or notes.shape[0] == 0:
        raise ValueError(f"note embeddings of shape {tuple(notes.shape)}; allowed: [B >= 1, {cue.shape[1]}]")
    return F.cosine_similarity(notes, cue, dim=-1).mean().item()
