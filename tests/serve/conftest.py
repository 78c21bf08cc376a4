"""A real Serve application on 127.0.0.1 per test module: tiny config, an untrained tiny checkpoint."""

from __future__ import annotations

import pytest
import torch

from instrumentgen.config import load_config
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.pretrained.clap import Clap
from instrumentgen.pretrained.codec import Codec


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """An untrained tiny InstrumentLM saved like jobs.train exports it; tiny codec/CLAP files made once."""
    cfg = load_config("tiny")
    Codec.load(cfg.codec)  # write the tiny weight files before the replicas race for them
    Clap.load(cfg.clap)
    torch.manual_seed(0)
    return InstrumentLM(cfg.model).save(str(tmp_path_factory.mktemp("ckpt") / "model.pt"))
