"""What an instrument's id is made of besides its request: the checkpoint's `model_id` and the render
settings. Torch-free, so the render job's driver plans a library's ids without the model stack."""

from __future__ import annotations

import dataclasses

from instrumentgen.config import Config
from instrumentgen.errors import MissingObjectError
from instrumentgen.model.checkpoint_metadata import read_metadata


def checkpoint_id(url: str) -> str:
    """The `model_id` an exported checkpoint was saved with, from its pickled dict alone (no weights, no
    torch); a file that is not such a checkpoint is read by torch, whose `LMError` names what is wrong."""
    try:
        metadata = read_metadata(url)
    except MissingObjectError:
        metadata = None  # read_checkpoint says so, naming what is allowed
    if metadata is not None and isinstance(metadata.get("model_id"), str):
        return metadata["model_id"]
    from instrumentgen.model.lm import LMError, read_checkpoint

    checkpoint, _ = read_checkpoint(url)
    if "model_id" not in checkpoint:
        raise LMError(f"checkpoint={url!r} has no model_id; give a file written by InstrumentLM.save")
    return checkpoint["model_id"]


def render_settings(cfg: Config) -> dict:
    """Every setting that changes an instrument's files for a given (cue, seed, checkpoint): part of its id."""
    generate = {k: v for k, v in dataclasses.asdict(cfg.generate).items() if k not in ("seed", "batch_size")}
    gate = {k: getattr(cfg.render, k) for k in ("max_tc", "max_mad_pitch", "retries", "on_fail", "audio_format")}
    return {
        "generate": generate,
        "duration_s": cfg.data.note_duration_s,
        "codec": cfg.codec.weights,
        "n_codebooks": cfg.codec.n_codebooks,
        "clap": cfg.clap.weights,
        "metrics": dataclasses.asdict(cfg.metrics),
        "render": gate,
    }
