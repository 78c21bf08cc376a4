"""The models that score a test instrument: the codec, CLAP and the FAD embedder, loaded once per scorer,
and the LM of the model being scored, swapped per checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, replace

from instrumentgen.config import Config
from instrumentgen.evaluation.table1 import GROUND_TRUTH
from instrumentgen.metrics.fad import Embedder
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.pretrained.clap import Clap
from instrumentgen.pretrained.codec import Codec
from instrumentgen.pretrained.loading import load_models


@dataclass
class ScoringModels:
    """lm: None for the ground truth; codec, clap and embedder as `cfg` names them."""

    lm: InstrumentLM | None
    codec: Codec
    clap: Clap
    embedder: Embedder

    @classmethod
    def load(cls, cfg: Config) -> "ScoringModels":
        """The codec, CLAP and embedder of `cfg`, no LM yet (the ground truth's; `with_checkpoint` adds one)."""
        _, codec, clap = load_models(cfg, None, clap=True)
        return cls(None, codec, clap, Embedder(cfg.metrics, clap))

    def with_checkpoint(self, checkpoint: str) -> "ScoringModels":
        """The same codec, CLAP and embedder with the LM of `checkpoint`: an exported InstrumentLM (path or
        URL) on the codec's device, or `GROUND_TRUTH` (no LM)."""
        lm = None if checkpoint == GROUND_TRUTH else InstrumentLM.load(checkpoint, str(self.codec.device))
        return replace(self, lm=lm)
