import re

import pytest
import torch

from instrumentgen.config import load_config
from instrumentgen.data.synthetic import synth_note, timbre_for
from instrumentgen.instruments.generate import GenerateError, InstrumentCue, generate_instrument, instrument_cues
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.pretrained.clap import Clap
from instrumentgen.pretrained.codec import Codec
from instrumentgen.vocab import VocabError

DURATION_S = 0.25
SLOTS = [(21, 25), (60, 100), (60, 127), (108, 50)]


@pytest.fixture(scope="module")
def models():
    cfg = load_config("tiny")
    torch.manual_seed(0)
    return cfg, InstrumentLM(cfg.model).eval(), Codec.load(cfg.codec), Clap.load(cfg.clap)


def generate(models, cue, seed=1, slots=SLOTS, **gen):
    cfg, lm, codec, clap = models
    gen_cfg = load_config("tiny", [f"generate.{k}={v}" for k, v in {**gen, "seed": seed}.items()]).generate
    return generate_instrument(lm, codec, clap, cue, gen_cfg, DURATION_S, slots)


def test_a_prompt_becomes_notes_at_its_slots(models):
    instrument = generate(models, InstrumentCue(prompt="warm analog brass"))
    assert instrument.audio.shape == (4, round(DURATION_S * 44100)) and torch.isfinite(instrument.audio).all()
    assert list(zip(instrument.pitches, instrument.velocities)) == SLOTS
    assert instrument.sample_rate_hz == 44100
    assert instrument.metadata["prompt"] == "warm analog brass" and instrument.metadata["seed"] == 1
    assert instrument.metadata["model_id"].startswith("instrumentlm-")


def test_the_full_grid_is_440_slots():
    cues = instrument_cues(InstrumentCue(family="brass"), None)
    assert len(cues) == 440 and len(set(zip(cues.pitch.tolist(), cues.velocity.tolist()))) == 440


def test_same_seed_same_notes_whatever_the_batch_size_and_slot_order(models):
    cue = InstrumentCue(prompt="glassy bell")
    first = generate(models, cue, batch_size=4)
    again = generate(models, cue, batch_size=1, slots=SLOTS[::-1])
    torch.testing.assert_close(again.audio.flip(0), first.audio)
    assert not torch.allclose(generate(models, cue, seed=2).audio, first.audio)


def test_each_kind_of_cue_reaches_the_model(models):
    reference = (torch.from_numpy(synth_note(57, 100, timbre_for(2), 16_000, 1.0)), 16_000)
    by_audio = generate(models, InstrumentCue(reference_audio=reference))
    by_text = generate(models, InstrumentCue(prompt="dark plucked bass"))
    by_metadata = generate(models, InstrumentCue(family="bass", source="acoustic"))
    assert not torch.allclose(by_audio.audio, by_text.audio)
    assert not torch.allclose(by_metadata.audio, by_text.audio)
    _, _, _, clap = models
    embedding = clap.embed_text(["dark plucked bass"])[0]
    torch.testing.assert_close(generate(models, InstrumentCue(clap_embedding=embedding)).audio, by_text.audio)


@pytest.mark.parametrize(
    "cue, error, message",
    [
        (InstrumentCue(prompt="   "), GenerateError, "prompt is empty; allowed: a description"),
        (
            InstrumentCue(),
            GenerateError,
            "the cue is empty; give prompt, reference_audio, clap_embedding, or family/source",
        ),
        (
            InstrumentCue(prompt="a", clap_embedding=torch.zeros(512)),
            GenerateError,
            "the cue gives prompt and clap_embedding; allowed: one of",
        ),
        (InstrumentCue(family="kazoo"), VocabError, "family='kazoo' is unknown; allowed: 0=bass, 1=brass"),
        (
            InstrumentCue(clap_embedding=torch.zeros(7)),
            GenerateError,
            "clap_embedding has 7 values; allowed: 512 finite values",
        ),
    ],
)
def test_bad_cues_raise_one_clear_error(models, cue, error, message):
    with pytest.raises(error, match=re.escape(message)):
        generate(models, cue)


@pytest.mark.parametrize(
    "slots, message",
    [
        ([(20, 100)], "pitch=20 is outside the 88 keys; allowed: MIDI 21..108"),
        ([(60, 60)], "velocity=60 is not a velocity layer; allowed: 25, 50, 75, 100, 127"),
    ],
)
def test_bad_slots_name_the_value(models, slots, message):
    with pytest.raises(VocabError, match=re.escape(message)):
        generate(models, InstrumentCue(prompt="brass"), slots=slots)


def test_a_metadata_model_refuses_a_prompt():
    cfg = load_config("tiny", ["model.conditioning=metadata"])
    lm = InstrumentLM(cfg.model).eval()
    with pytest.raises(GenerateError, match="prompt needs a CLAP-conditioned model"):
        generate_instrument(lm, None, None, InstrumentCue(prompt="brass"), cfg.generate, DURATION_S, SLOTS)
