"""load_models: which of LM, codec and CLAP load for each caller, on which device, and the refusal
to fall back to the CPU when GPUs were asked for."""

from __future__ import annotations

import pytest
import torch

from instrumentgen.config import load_config
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.pretrained.loading import DeviceError, device_for, load_models
from instrumentgen.pretrained.weights import WeightsError


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """A tiny CLAP-conditioned and a tiny metadata-conditioned InstrumentLM file."""
    root = tmp_path_factory.mktemp("lm")
    paths = {}
    for conditioning in ("clap", "metadata"):
        paths[conditioning] = str(root / f"{conditioning}.pt")
        InstrumentLM(load_config("tiny", [f"model.conditioning={conditioning}"]).model).save(paths[conditioning])
    return paths


def test_clap_conditioned_lm_loads_all_three(cache, checkpoints):
    cfg = load_config("tiny", ["codec.n_codebooks=3"])
    lm, codec, clap = load_models(cfg, checkpoints["clap"])
    assert lm.cfg.conditioning == "clap" and not lm.training
    assert codec.n_codebooks == 3 and codec.model_id.startswith("dac-tiny-")
    assert clap.model_id.startswith("clap-tiny-")
    assert clap.embed_text(["warm brass"]).shape == (1, 512)


def test_clap_only_when_needed(cache, checkpoints):
    cfg = load_config("tiny")
    assert load_models(cfg, checkpoints["metadata"]).clap is None  # the LM does not take CLAP
    assert load_models(cfg, checkpoints["metadata"], clap=True).clap is not None  # evaluation scores with it
    assert load_models(cfg, checkpoints["clap"], clap=False).clap is None  # generate without a prompt
    no_lm = load_models(cfg, None)  # preprocessing: codec and CLAP, no LM
    assert no_lm.lm is None and no_lm.clap is not None


def test_device_goes_to_all_three(cache, checkpoints):
    lm, codec, clap = load_models(load_config("tiny"), checkpoints["clap"], device="cpu")
    devices = {next(lm.parameters()).device, codec.device, clap.device}
    assert devices == {torch.device("cpu")}


def test_missing_weights_name_the_key(cache, checkpoints):
    cfg = load_config("tiny", ["codec.weights=/no/such/dac.pth"])
    with pytest.raises(WeightsError, match=r"codec.weights='/no/such/dac.pth': no such file"):
        load_models(cfg, checkpoints["clap"])


def test_device_for_cpu_and_refusal():
    assert device_for(0, "serve.num_gpus", "cpu") == "cpu"
    if torch.cuda.is_available():
        assert device_for(1, "serve.num_gpus") == "cuda"
        return
    with pytest.raises(DeviceError, match=r"^serve.num_gpus=1 but torch sees no CUDA device .* set serve.num_gpus=0"):
        device_for(1, "serve.num_gpus")
