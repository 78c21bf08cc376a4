"""From `Cues` to the condition tokens the decoder cross-attends to (paper, section 2.3).

Each attribute is one token: family, source, pitch (88 keys) and velocity (5 layers) go through
a lookup table then a linear layer ("LUT -> Linear"); the CLAP embedding is quantized by a
residual vector quantizer with EMA codebooks (`quantizer.py`, audiocraft's), then projected.
Every conditioner has a learned null entry, used for attributes that are not given, for
per-sample attribute dropout, and for the null condition of classifier-free guidance, which
nulls *every* token, the CLAP one included (audiocraft leaves the joint embedding un-nulled; we
do not copy that).
"""

from __future__ import annotations

import torch
from torch import nn

from instrumentgen.config import ModelConfig
from instrumentgen.model.cues import NOT_GIVEN, Cues
from instrumentgen.model.quantizer import ResidualVectorQuantizer
from instrumentgen.vocab import FAMILIES, PITCH_MAX, PITCH_MIN, PITCHES, SOURCES, VELOCITIES, VocabError


class CategoricalConditioner(nn.Module):
    """LUT -> Linear: ids [B] long in [0, num_values] -> tokens [B, D]; id `num_values` is null."""

    def __init__(self, num_values: int, dim: int):
        super().__init__()
        self.null_id = num_values
        self.lut = nn.Embedding(num_values + 1, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.lut(ids))


class ClapConditioner(nn.Module):
    """clap_embedding [B, E] (or None: all null) -> (tokens [B, D], commitment loss, codes [B, Q] or None).

    The embedding is quantized in fp32, then scaled by sqrt(E) before the projection: CLAP's
    embeddings are unit-norm, so each of their E coordinates is ~1/sqrt(E), where a lookup-table
    row (`nn.Embedding`, N(0, 1)) has coordinates ~1. Scaled, the CLAP token leaves the same
    `nn.Linear` at the scale of the other tokens (norm ~sqrt(D/3) each) instead of ~sqrt(E) times
    smaller (docs/generation.md has the measured norms). A constant, not a parameter: the
    architecture and the checkpoints' tensors are the paper's.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.rvq = ResidualVectorQuantizer(
            cfg.clap_dim,
            cfg.rvq_codebooks,
            cfg.rvq_bins,
            cfg.rvq_decay,
            cfg.rvq_kmeans_iters,
            cfg.rvq_dead_code_threshold,
            cfg.rvq_usage_decay,
        )
        self.proj = nn.Linear(cfg.clap_dim, cfg.dim)
        self.null = nn.Parameter(torch.zeros(cfg.dim))
        self.scale = cfg.clap_dim**0.5

    def forward(
        self, clap_embedding: torch.Tensor | None, null: torch.Tensor, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if clap_embedding is None:
            return self.null.expand(batch, -1), self.null.new_zeros(()), None
        quantized, codes, loss = self.rvq(clap_embedding.float())
        tokens = self.proj((quantized * self.scale).to(self.proj.weight.dtype))
        return torch.where(null[:, None], self.null, tokens), loss, codes


def _velocity_table() -> torch.Tensor:
    """[128] long: MIDI velocity -> layer index, -1 where no layer."""
    table = torch.full((128,), -1, dtype=torch.long)
    table[list(VELOCITIES)] = torch.arange(len(VELOCITIES))
    return table


def check_cues(cues: Cues) -> None:
    """Raise `VocabError` naming the first value outside the vocabulary and the allowed values."""
    checks = (
        (
            "family",
            cues.family,
            (cues.family < NOT_GIVEN) | (cues.family >= len(FAMILIES)),
            f"-1 (not given) or 0..{len(FAMILIES) - 1} ({', '.join(FAMILIES)})",
        ),
        (
            "source",
            cues.source,
            (cues.source < NOT_GIVEN) | (cues.source >= len(SOURCES)),
            f"-1 (not given) or 0..{len(SOURCES) - 1} ({', '.join(SOURCES)})",
        ),
        ("pitch", cues.pitch, (cues.pitch < PITCH_MIN) | (cues.pitch > PITCH_MAX), f"MIDI {PITCH_MIN}..{PITCH_MAX}"),
        (
            "velocity",
            cues.velocity,
            ~torch.isin(cues.velocity, torch.tensor(VELOCITIES, device=cues.velocity.device)),
            ", ".join(map(str, VELOCITIES)),
        ),
    )
    if not torch.stack([bad.any() for _, _, bad, _ in checks]).any():  # one device sync when all is well
        return
    for name, values, bad, allowed in checks:
        if bad.any():
            raise VocabError(f"{name}={values[bad][0].item()} is not allowed; allowed: {allowed}")


class Conditioners(nn.Module):
    """cues -> condition tokens [B, C, D] (C = 4 attributes, + 1 CLAP token in the CLAP model)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.family = CategoricalConditioner(len(FAMILIES), cfg.dim)
        self.source = CategoricalConditioner(len(SOURCES), cfg.dim)
        self.pitch = CategoricalConditioner(len(PITCHES), cfg.dim)
        self.velocity = CategoricalConditioner(len(VELOCITIES), cfg.dim)
        self.clap = ClapConditioner(cfg) if cfg.conditioning == "clap" else None
        self.register_buffer("velocity_table", _velocity_table(), persistent=False)

    @property
    def num_tokens(self) -> int:
        return 4 + (self.clap is not None)

    def attribute_dropout(self, cues: Cues) -> Cues:
        """Training: each sample drops its own family / source with p = family_dropout /
        source_dropout (the CLAP model only: in the metadata model they are the timbre cue)."""
        if self.clap is None:
            return cues
        batch, device = len(cues), cues.pitch.device
        drop_family = torch.rand(batch, device=device) < self.cfg.family_dropout
        drop_source = torch.rand(batch, device=device) < self.cfg.source_dropout
        return Cues(
            cues.family.masked_fill(drop_family, NOT_GIVEN),
            cues.source.masked_fill(drop_source, NOT_GIVEN),
            cues.pitch,
            cues.velocity,
            cues.clap_embedding,
        )

    def forward(
        self, cues: Cues, null: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """cues (B notes), null [B] bool (True: the null condition of CFG) -> (tokens [B, C, D],
        RVQ commitment loss, RVQ codes [B, Q] of the CLAP embeddings or None)."""
        check_cues(cues)
        batch = len(cues)
        if null is None:
            null = torch.zeros(batch, dtype=torch.bool, device=cues.pitch.device)

        def ids(conditioner: CategoricalConditioner, index: torch.Tensor) -> torch.Tensor:
            return torch.where(null | (index == NOT_GIVEN), conditioner.null_id, index)

        tokens = [
            self.family(ids(self.family, cues.family)),
            self.source(ids(self.source, cues.source)),
            self.pitch(ids(self.pitch, cues.pitch - PITCH_MIN)),
            self.velocity(ids(self.velocity, self.velocity_table[cues.velocity])),
        ]
        rvq_loss, clap_codes = tokens[0].new_zeros(()), None
        if self.clap is not None:
            clap_token, rvq_loss, clap_codes = self.clap(cues.clap_embedding, null, batch)
            tokens.append(clap_token)
        return torch.stack(tokens, dim=1), rvq_loss, clap_codes
