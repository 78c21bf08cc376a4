"""From an instrument cue to an `Instrument`: 440 (pitch, velocity) notes that share one timbre.

An `InstrumentCue` names the timbre one way: a text prompt (-> CLAP text embedding), a reference
recording (-> CLAP audio embedding), a CLAP embedding given directly, or family/source metadata
(the metadata model; the CLAP model also takes them, the paper does not at inference). The cue
is expanded to the instrument's slots, generated in batches of `generate.batch_size` and
decoded by the codec.

Seed policy: note (pitch, velocity) of an instrument with seed s samples from the stream
`mix_seed(s, pitch, velocity)`, so the same (cue, seed) gives the same notes whatever the batch
size, the order of slots, the replica or the device that generates them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from instrumentgen.config import GenerateConfig, ModelConfig, config_hash
from instrumentgen.errors import UserError
from instrumentgen.instruments.instrument import Instrument
from instrumentgen.model.cues import Cues, instrument_grid, make_cues
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.model.sampling import mix_seed


class GenerateError(UserError):
    """An instrument cue that cannot be generated; the message names the field and what is allowed."""


@dataclass
class InstrumentCue:
    """What the instrument should sound like (one of prompt / reference_audio / clap_embedding,
    optionally with family / source; or family / source alone).

    reference_audio: (audio [L] float, sample_rate_hz). clap_embedding: [512].
    """

    prompt: str | None = None
    reference_audio: tuple[torch.Tensor, int] | None = None
    clap_embedding: torch.Tensor | None = None
    family: str | int | None = None
    source: str | int | None = None

    def describe(self) -> dict:
        """JSON-serialisable summary for manifests."""
        kind = (
            "prompt"
            if self.prompt is not None
            else "reference_audio"
            if self.reference_audio is not None
            else "clap_embedding"
            if self.clap_embedding is not None
            else "metadata"
        )
        return {"cue": kind, "prompt": self.prompt, "family": self.family, "source": self.source}


def cue_embedding(cue: InstrumentCue, clap, model_cfg: ModelConfig) -> torch.Tensor | None:
    """The cue's CLAP embedding [model.clap_dim] (None for a metadata cue); `GenerateError` for a bad cue."""
    conditioning, clap_dim = model_cfg.conditioning, model_cfg.clap_dim
    given = [name for name in ("prompt", "reference_audio", "clap_embedding") if getattr(cue, name) is not None]
    if len(given) > 1:
        raise GenerateError(
            f"the cue gives {' and '.join(given)}; allowed: one of prompt, reference_audio, clap_embedding"
        )
    if not given:
        if cue.family is None and cue.source is None:
            raise GenerateError("the cue is empty; give prompt, reference_audio, clap_embedding, or family/source")
        return None
    if conditioning != "clap":
        raise GenerateError(
            f"{given[0]} needs a CLAP-conditioned model; this one has model.conditioning={conditioning!r}, "
            "allowed cues: family and source"
        )
    if cue.prompt is not None:
        if not cue.prompt.strip():
            raise GenerateError("prompt is empty; allowed: a description such as 'warm analog brass'")
        return clap.embed_text([cue.prompt])[0].cpu()
    if cue.reference_audio is not None:
        audio, sample_rate_hz = cue.reference_audio
        return clap.embed_audio(torch.as_tensor(audio, dtype=torch.float32).reshape(1, -1), sample_rate_hz)[0].cpu()
    embedding = torch.as_tensor(cue.clap_embedding, dtype=torch.float32).reshape(-1)
    if embedding.numel() != clap_dim or not torch.isfinite(embedding).all():
        raise GenerateError(f"clap_embedding has {embedding.numel()} values; allowed: {clap_dim} finite values")
    return embedding


def slot_seeds(seed: int, cues: Cues) -> torch.Tensor:
    """[S] long: the sampling stream of each note, from the instrument seed and the note's slot."""
    return mix_seed(seed, cues.pitch, cues.velocity)


def generate_codes(
    lm: InstrumentLM, cues: Cues, num_frames: int, gen_cfg: GenerateConfig, progress: bool = False
) -> torch.Tensor:
    """cues for S notes -> codes [S, K, num_frames], `gen_cfg.batch_size` notes per generation,
    each note from its slot's stream of the instrument seed `gen_cfg.seed`."""
    seeds = slot_seeds(gen_cfg.seed, cues)
    batches = range(0, len(cues), gen_cfg.batch_size)
    codes = [
        lm.generate(
            cues[i : i + gen_cfg.batch_size],
            num_frames,
            gen_cfg.cfg_coef,
            gen_cfg.top_k,
            gen_cfg.temperature,
            seeds[i : i + gen_cfg.batch_size],
        ).cpu()
        for i in tqdm(batches, desc="generate", unit="batch", disable=not progress)
    ]
    return torch.cat(codes)


def decode_notes(codec, codes: torch.Tensor, duration_s: float, batch_size: int) -> torch.Tensor:
    """codes [S, K, N] -> audio [S, duration_s * codec rate] on the CPU, `batch_size` notes per decode."""
    num_samples = round(duration_s * codec.sample_rate_hz)
    return torch.cat(
        [codec.decode(codes[i : i + batch_size])[:, 0, :num_samples].cpu() for i in range(0, len(codes), batch_size)]
    )


def instrument_cues(
    cue: InstrumentCue, clap_embedding: torch.Tensor | None, slots: list[tuple[int, int]] | None = None
) -> Cues:
    """The cue expanded to its (pitch, velocity) slots (default: the 440 of a full instrument)."""
    pitches, velocities = instrument_grid() if slots is None else ([p for p, _ in slots], [v for _, v in slots])
    if not pitches:
        raise GenerateError("slots is empty; allowed: (pitch 21..108, velocity 25/50/75/100/127) pairs")
    return make_cues(pitches, velocities, cue.family, cue.source, clap_embedding)


def generate_instrument(
    lm: InstrumentLM,
    codec,
    clap,
    cue: InstrumentCue,
    gen_cfg: GenerateConfig,
    duration_s: float,
    slots: list[tuple[int, int]] | None = None,
    progress: bool = False,
) -> Instrument:
    """One instrument: `cue` at every slot -> codes -> audio [S, duration_s * 44.1 kHz], seeded by `gen_cfg.seed`."""
    cues = instrument_cues(cue, cue_embedding(cue, clap, lm.cfg), slots)
    num_frames = codec.frames_for(duration_s)
    codes = generate_codes(lm, cues, num_frames, gen_cfg, progress)
    audio = decode_notes(codec, codes, duration_s, gen_cfg.batch_size)
    metadata = {
        **cue.describe(),
        "seed": gen_cfg.seed,
        "model_id": lm.model_id,
        "codec_model_id": codec.model_id,
        "clap_model_id": getattr(clap, "model_id", None),
        "generate": config_hash(vars(gen_cfg)),
        "duration_s": duration_s,
        "num_frames": num_frames,
    }
    return Instrument(audio, cues.pitch.tolist(), cues.velocity.tolist(), codec.sample_rate_hz, metadata)
