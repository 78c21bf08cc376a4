import dataclasses

import numpy as np
import pytest
import torch

from instrumentgen import storage
from instrumentgen.audio import note_gains
from instrumentgen.config import load_config
from instrumentgen.instruments.generate import InstrumentCue, generate_codes, generate_instrument, instrument_cues
from instrumentgen.instruments.instrument import Instrument
from instrumentgen.instruments.slices import (
    embedded_cue,
    features_tc,
    finish_instrument,
    note_features,
    render_shard,
)
from instrumentgen.metrics.tc import TCScale, tc
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.pretrained.clap import Clap
from instrumentgen.pretrained.codec import Codec

DURATION_S = 0.25
SLOTS = [(p, v) for p in (40, 41, 60, 61, 90) for v in (50, 127)]


@pytest.fixture(scope="module")
def models():
    cfg = load_config("tiny")
    torch.manual_seed(0)
    return cfg, InstrumentLM(cfg.model).eval(), Codec.load(cfg.codec), Clap.load(cfg.clap)


def render(models, url, shard_size, candidates=1, seed=3):
    cfg, lm, codec, clap = models
    gen_cfg = dataclasses.replace(cfg.generate, seed=seed)
    cue = embedded_cue(InstrumentCue(prompt="warm analog brass"), clap, lm.cfg)
    shards = [
        render_shard(
            lm,
            codec,
            None,
            cue=cue,
            gen_cfg=gen_cfg,
            duration_s=DURATION_S,
            slots=SLOTS[i : i + shard_size],
            url=url,
            candidates=candidates,
            metrics_cfg=cfg.metrics,
            worker=f"w{i // shard_size % 2}",
        )
        for i in range(0, len(SLOTS), shard_size)
    ]
    return finish_instrument(
        url,
        shards,
        {"prompt": "warm analog brass", "seed": seed},
        "wav24",
        codec.sample_rate_hz,
        round(DURATION_S * codec.sample_rate_hz),
    )


def test_shards_equal_one_direct_generation(models, tmp_path):
    cfg, lm, codec, clap = models
    manifest = render(models, str(tmp_path / "a"), shard_size=3)
    gen_cfg = dataclasses.replace(cfg.generate, seed=3)
    cue = InstrumentCue(prompt="warm analog brass")
    direct = generate_instrument(lm, codec, clap, cue, gen_cfg, DURATION_S, SLOTS)
    direct_codes = generate_codes(
        lm, instrument_cues(cue, clap.embed_text([cue.prompt])[0], SLOTS), codec.frames_for(DURATION_S), gen_cfg
    )
    codes = np.load(tmp_path / "a" / "codes.npy")
    np.testing.assert_array_equal(codes, direct_codes.numpy())
    written = Instrument.read(str(tmp_path / "a"))
    gains = torch.tensor([note.gain for note in manifest.notes])
    torch.testing.assert_close(written.audio, direct.audio * gains[:, None], atol=1e-5, rtol=0)
    assert manifest.about["workers"] == ["w0", "w1"] and len(manifest.notes) == len(SLOTS)
    assert manifest.about["tc"] == manifest.about["tc_without_selection"]
    assert manifest.about["tc"] == pytest.approx(float(tc(direct.audio, 44100).normalised), rel=1e-4)
    assert (tmp_path / "a" / "instrument.zip").exists() and (tmp_path / "a" / "instrument.sfz").exists()


def test_selection_lowers_tc_and_keeps_only_chosen_notes(models, tmp_path):
    plain = render(models, str(tmp_path / "k1"), shard_size=4, candidates=1)
    chosen = render(models, str(tmp_path / "k3"), shard_size=4, candidates=3)
    assert chosen.about["tc_without_selection"] == pytest.approx(plain.about["tc"], rel=1e-5)
    assert chosen.about["tc"] < plain.about["tc"]
    assert {note.candidate for note in chosen.notes} - {0}  # some slot kept another candidate
    assert not storage.exists(str(tmp_path / "k3" / "candidates"))
    assert len(storage.list_files(str(tmp_path / "k3" / "notes"), ".wav")) == len(SLOTS)


def test_features_tc_matches_metrics_tc():
    torch.manual_seed(0)
    audio = torch.randn(5, 11025) * 0.1
    metrics = load_config(
        "tiny",
        [
            "metrics.tc_n_fft=[2048,1024]",
            "metrics.tc_hop=[512,256]",
            "metrics.tc_mels=[80,40]",
            "metrics.tc_mfccs=[13,10]",
        ],
    ).metrics
    features, sizes = note_features(audio, 44100, metrics)
    expected = tc(audio, 44100, [TCScale(2048, 512, 80, 13), TCScale(1024, 256, 40, 10)]).normalised
    assert features_tc(features, sizes) == pytest.approx(float(expected), rel=1e-5)
    assert features_tc(features[:1], sizes) is None


def test_only_a_clipping_note_is_scaled():
    audio = torch.tensor([[0.5, -0.2], [1.98, -0.3]])
    torch.testing.assert_close(note_gains(audio), torch.tensor([1.0, 0.5]))
