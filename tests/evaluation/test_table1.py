"""Table 1 arithmetic, the records of an instrument's scores and the fixed cue (no Ray)."""

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from instrumentgen.config import load_config
from instrumentgen.data.synthetic import write_fixture_nsynth
from instrumentgen.evaluation import table1 as evaluation
from instrumentgen.evaluation.table1 import InstrumentScores, model_row, summary_table
from instrumentgen.metrics.clap_score import clap_score


def instrument_row(name, pitch_errors, clap=0.5, tc=1.0):
    voiced = [abs(e) for e in pitch_errors if e is not None]
    return {
        "name": name,
        "family": "brass",
        "source": "electronic",
        "tc": tc,
        "clap": clap,
        "mad_pitch": float(np.median(voiced)) if voiced else None,
        "unvoiced": sum(e is None for e in pitch_errors),
        "pitch_errors": pitch_errors,
    }


def test_mad_pitch_of_a_model_is_the_median_over_all_voiced_notes():
    rows = [
        instrument_row("a", [0.1, -0.1, 0.1, 0.2, -0.2], clap=0.2, tc=1.0),
        instrument_row("b", [2.0, None], clap=0.6, tc=2.0),
        instrument_row("c", [None, None], clap=0.4, tc=3.0),
    ]
    row = model_row("clap", "runs/clap/model.pt", rows, fad_value=1.5)
    # |errors| of the 6 voiced notes: 0.1 0.1 0.1 0.2 0.2 2.0 -> 0.15; the mean of the instruments'
    # medians (0.1 and 2.0) would be 1.05.
    assert row["mad_pitch"] == pytest.approx(0.15)
    assert row["unvoiced"] == 3
    assert row["clap"] == pytest.approx(0.4) and row["tc"] == pytest.approx(2.0) and row["fad"] == 1.5
    assert [r["mad_pitch"] for r in row["instruments"]] == [pytest.approx(0.1), 2.0, None]

    silent = model_row("silent", "x.pt", [instrument_row("c", [None])], 0.0)
    results, table = summary_table([row, silent], "vggish")
    assert results == {"fad_embedder": "vggish", "models": [row, silent]}
    lines = table.splitlines()
    assert "| clap | 1.5 | 0.400 | 0.150 | 3 | 2.000 |" in lines
    assert "| silent | 0 | 0.500 | n/a | 1 | 1.000 |" in lines
    assert "| c | brass | electronic | 0.400 | n/a | 2 | 3.000 |" in lines
    assert table.count("## Per instrument") == 2


def test_instrument_scores_split_into_a_json_row_and_arrays():
    scores = InstrumentScores(
        "a",
        "brass",
        "electronic",
        tc=1.2,
        mad_pitch=0.1,
        unvoiced=1,
        clap=0.5,
        pitches=[60, 62],
        velocities=[100, 100],
        pitch_errors=np.array([0.1, np.nan]),
        tc_matrix=np.zeros((2, 2)),
        embeddings=np.ones((2, 3)),
        real_embeddings=np.ones((2, 3)),
    )
    row = scores.json_row()
    assert row == {
        "name": "a",
        "family": "brass",
        "source": "electronic",
        "tc": 1.2,
        "mad_pitch": 0.1,
        "unvoiced": 1,
        "clap": 0.5,
        "pitches": [60, 62],
        "velocities": [100, 100],
        "pitch_errors": [0.1, None],
        "rvq_counts": None,
    }
    assert set(scores.arrays()) == {"tc_matrix", "embeddings", "real_embeddings"}
    assert scores.arrays()["embeddings"].shape == (2, 3)


@pytest.fixture(scope="module")
def models(cache, tmp_path_factory):
    from instrumentgen.metrics.fad import Embedder
    from instrumentgen.pretrained.clap import Clap
    from instrumentgen.pretrained.codec import Codec

    root = tmp_path_factory.mktemp("nsynth")
    source = write_fixture_nsynth(str(root), 1, [48, 60, 72], [50, 127], ("jsonwav",))["jsonwav"]
    cfg = load_config("tiny", [f"data.source={source}", "metrics.eval_cue=mean_embedding"])
    clap = Clap.load(cfg.clap)
    return cfg, Codec.load(cfg.codec.weights), clap, Embedder(cfg.metrics, clap)


def test_the_mean_embedding_cue_reaches_the_model_and_the_clap_score(models, monkeypatch):
    cfg, codec, clap, embedder = models
    instrument = evaluation.load_test_instruments(cfg)[0]
    real = torch.from_numpy(instrument.audio)
    notes = clap.embed_audio(real, 44100)
    cue = evaluation.instrument_clap_cue(instrument, clap, 44100, "mean_embedding")
    assert torch.allclose(cue, F.normalize(notes.mean(0), dim=0), atol=1e-6)
    assert cue.norm().item() == pytest.approx(1.0, abs=1e-5)
    reference = evaluation.instrument_clap_cue(instrument, clap, 44100, "reference_note")
    assert torch.allclose(reference, clap.embed_audio(real[instrument.reference_index()][None], 44100)[0])

    seen = []

    def fake_generate(lm, codec, clap, cue, gen_cfg, duration_s, slots):
        seen.append((cue, slots))
        return types.SimpleNamespace(audio=real.flip(0))  # any audio of the right shape

    monkeypatch.setattr(evaluation, "generate_instrument", fake_generate)
    from instrumentgen.model.lm import InstrumentLM

    lm = InstrumentLM(cfg.model).eval()
    scores = evaluation.evaluate_instrument(cfg, instrument, lm, codec, clap, embedder)
    counts = torch.tensor(scores.rvq_counts)  # the quantizer's picks for the real notes, per codebook
    assert counts.shape == (cfg.model.rvq_codebooks, cfg.model.rvq_bins)
    assert counts.sum(dim=1).tolist() == [len(instrument.pitches)] * cfg.model.rvq_codebooks
    ((given, slots),) = seen
    assert torch.allclose(given.clap_embedding, cue, atol=1e-6)
    assert slots == list(zip(instrument.pitches, instrument.velocities))
    assert scores.clap == pytest.approx(clap_score(cue, clap.embed_audio(real.flip(0), 44100)), abs=1e-5)


def test_rvq_usage_of_a_model_sums_its_instruments_counts():
    a = {**instrument_row("a", [0.1]), "rvq_counts": [[2, 0, 0, 0], [1, 1, 0, 0]]}
    b = {**instrument_row("b", [0.1]), "rvq_counts": [[0, 2, 0, 0], [0, 0, 1, 1]]}
    row = model_row("clap", "m.pt", [a, b], fad_value=1.0)
    usage = row["rvq_usage"]
    # codebook 0: entries 0 and 1 twice each -> perplexity 2, 2 live; codebook 1: 4 entries once -> 4, 4
    assert usage["bins"] == 4 and usage["live"] == [2, 4]
    assert usage["perplexity"] == [pytest.approx(2.0), pytest.approx(4.0)]
    assert model_row("gt", "ground_truth", [instrument_row("c", [0.1])], 0.0)["rvq_usage"] is None
    _, table = summary_table([row], "vggish")
    assert (
        "CLAP quantizer of clap on the test notes (perplexity, live of 4): codebook 0: 2.0, 2; codebook 1: 4.0, 4"
        in table
    )
