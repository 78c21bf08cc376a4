"""What a note is asked to be: the conditioning attributes of a batch of notes.

A `Cues` batch holds, for B notes, the categorical attributes of the paper's section 2.3 and
the optional CLAP embedding. `-1` in `family` / `source` means "not given" (the attribute is
replaced by its null embedding, as at inference of the CLAP model).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from instrumentgen.vocab import PITCHES, VELOCITIES, VocabError, check_pitch, check_velocity, family_id, source_id

NOT_GIVEN = -1


@dataclass
class Cues:
    """Conditioning for B notes.

    family: [B] long, NSynth family id or -1.   source: [B] long, NSynth source id or -1.
    pitch: [B] long, MIDI 21..108.              velocity: [B] long, one of 25/50/75/100/127.
    clap_embedding: [B, 512] float or None (metadata-only model).
    """

    family: torch.Tensor
    source: torch.Tensor
    pitch: torch.Tensor
    velocity: torch.Tensor
    clap_embedding: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.pitch.shape[0]

    def to(self, device: torch.device | str) -> "Cues":
        clap = None if self.clap_embedding is None else self.clap_embedding.to(device)
        return Cues(
            self.family.to(device), self.source.to(device), self.pitch.to(device), self.velocity.to(device), clap
        )

    def __getitem__(self, index: slice | torch.Tensor) -> "Cues":
        clap = None if self.clap_embedding is None else self.clap_embedding[index]
        return Cues(self.family[index], self.source[index], self.pitch[index], self.velocity[index], clap)

    def with_clap(self, clap_embedding: torch.Tensor | None) -> "Cues":
        return replace(self, clap_embedding=clap_embedding)


def make_cues(
    pitches: list[int],
    velocities: list[int],
    family: str | int | None = None,
    source: str | int | None = None,
    clap_embedding: torch.Tensor | None = None,
) -> Cues:
    """Validated cues for notes sharing one family/source/CLAP embedding ([512] or [1, 512]).

    Raises `VocabError` naming the bad value and the allowed ones.
    """
    if len(pitches) != len(velocities):
        raise VocabError(
            f"pitches ({len(pitches)}) and velocities ({len(velocities)}) differ in length; "
            "allowed: one velocity per pitch"
        )
    pitch = torch.tensor([check_pitch(p) for p in pitches], dtype=torch.long)
    velocity = torch.tensor([check_velocity(v) for v in velocities], dtype=torch.long)
    n = len(pitches)
    fam = NOT_GIVEN if family is None else family_id(family)
    src = NOT_GIVEN if source is None else source_id(source)
    clap = None
    if clap_embedding is not None:
        clap = clap_embedding.reshape(1, -1).expand(n, -1).float()
    return Cues(torch.full((n,), fam, dtype=torch.long), torch.full((n,), src, dtype=torch.long), pitch, velocity, clap)


def instrument_grid() -> tuple[list[int], list[int]]:
    """The 440 (pitch, velocity) slots of an instrument, pitch-major: 88 keys x 5 velocities."""
    pitches = [p for p in PITCHES for _ in VELOCITIES]
    velocities = [v for _ in PITCHES for v in VELOCITIES]
    return pitches, velocities
