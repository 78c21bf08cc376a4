"""The evaluation job end to end on the tiny config: the ground truth, two saved random-init
checkpoints in one table, resuming, and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from instrumentgen.config import load_config
from instrumentgen.data.synthetic import write_fixture_nsynth
from instrumentgen.evaluation.table1 import load_test_instruments
from instrumentgen.instruments.generate import InstrumentCue, generate_instrument
from instrumentgen.metrics.clap_score import clap_score
from instrumentgen.metrics.pitch import pitch_report
from instrumentgen.metrics.tc import scales_from_config, tc
from instrumentgen.model.lm import InstrumentLM
from jobs import evaluate

PITCHES = [36, 48, 60, 72]
VELOCITIES = [50, 127]


@pytest.fixture(scope="module")
def test_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsynth-test")
    return write_fixture_nsynth(str(root), 2, PITCHES, VELOCITIES, ("jsonwav",))["jsonwav"]


def overrides(test_set):
    return ["config=tiny", f"data.source={test_set}", "data.note_duration_s=0.5"]


def direct_scores(cfg, audio, instrument, clap):
    """TC, MAD_pitch and CLAP score of `audio` [S, L] by the metric functions themselves."""
    from instrumentgen.pretrained.clap import Clap

    clap = clap or Clap.load(cfg.clap)
    real = torch.from_numpy(instrument.audio)
    cue = clap.embed_audio(real[instrument.reference_index()][None], 44100)[0]
    pitch = pitch_report(audio, 44100, instrument.pitches)
    return (
        tc(audio, 44100, scales_from_config(cfg.metrics)).normalised.item(),
        pitch,
        clap_score(cue, clap.embed_audio(audio, 44100)),
    )


def test_ground_truth_table_figures_and_a_resumed_rerun(ray_local, cache, test_set, tmp_path, capsys):
    from instrumentgen.pretrained.clap import Clap

    out = str(tmp_path / "eval")
    assert evaluate.main([*overrides(test_set), "checkpoint=ground_truth", f"out={out}"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["fad_embedder"] == "vggish"
    (model,) = results["models"]
    assert model["model"] == "ground truth" and model["checkpoint"] == "ground_truth"
    assert model["fad"] == pytest.approx(0.0, abs=1e-6)  # the real notes against themselves
    cfg = load_config("tiny", overrides(test_set)[1:])
    instruments = load_test_instruments(cfg)
    clap = Clap.load(cfg.clap)
    assert [row["name"] for row in model["instruments"]] == [i.name for i in instruments]
    all_errors = []
    for row, instrument in zip(model["instruments"], instruments):
        want_tc, pitch, want_clap = direct_scores(cfg, torch.from_numpy(instrument.audio), instrument, clap)
        assert row["tc"] == pytest.approx(want_tc, rel=1e-5)
        assert row["mad_pitch"] == pytest.approx(pitch.mad_pitch, abs=1e-6) and row["unvoiced"] == pitch.unvoiced
        assert row["clap"] == pytest.approx(want_clap, abs=1e-5)
        all_errors += pitch.error_semitones.abs().tolist()
        folder = tmp_path / "eval" / "ground_truth"
        arrays = np.load(folder / "instruments" / f"{row['name']}.npz")
        assert arrays["tc_matrix"].shape == (8, 8) and arrays["embeddings"].shape[0] == 8
        for figure in ("tc", "pitch"):
            with Image.open(folder / "figures" / f"{row['name']}_{figure}.png") as image:
                assert image.size[0] > 300
    assert model["mad_pitch"] == pytest.approx(float(np.median(all_errors)), abs=1e-6)
    table = (tmp_path / "eval" / "results.md").read_text()
    assert f"| ground truth | 0 | {model['clap']:.3f} | {model['mad_pitch']:.3f} | 0 | {model['tc']:.3f} |" in table

    # A re-run finds every instrument scored and only rewrites the tables.
    capsys.readouterr()
    stamp = (folder / "instruments" / f"{instruments[0].name}.npz").stat().st_mtime_ns
    assert evaluate.main([*overrides(test_set), "checkpoint=ground_truth", f"out={out}"]) == 0
    assert "ground truth: 2 test instruments, 2 already scored" in capsys.readouterr().out
    assert (folder / "instruments" / f"{instruments[0].name}.npz").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_two_checkpoints_and_the_ground_truth_make_one_table_on_s3(ray_local, cache, test_set, tmp_path, s3_bucket):
    import fsspec

    cfg = load_config("tiny", overrides(test_set)[1:])
    checkpoints = []
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        (tmp_path / name).mkdir()
        checkpoints.append(InstrumentLM(cfg.model).eval().save(str(tmp_path / name / "model.pt")))
    out = f"{s3_bucket}/table"
    argv = [*overrides(test_set), f"checkpoints={','.join(checkpoints)},ground_truth", f"out={out}", "actors=1"]
    assert evaluate.main(argv) == 0
    fs = fsspec.filesystem("s3")
    results = json.loads(fs.cat(f"{out}/results.json"))
    assert [m["model"] for m in results["models"]] == ["a/model.pt", "b/model.pt", "ground truth"]
    for folder in ("a_model.pt", "b_model.pt", "ground_truth"):
        assert fs.exists(f"{out}/{folder}/figures/pitch_error.png")
        assert len(fs.ls(f"{out}/{folder}/instruments")) == 4  # json + npz per instrument
    table = fs.cat(f"{out}/results.md").decode()
    assert all(f"| {m['model']} |" in table for m in results["models"])
    first, second, truth = results["models"]
    assert first["fad"] > 0 and truth["fad"] == pytest.approx(0, abs=1e-6)
    assert first["instruments"] != second["instruments"]

    # The generated notes of model a, made again here, give the scores of the table.
    instrument = load_test_instruments(cfg)[0]
    lm = InstrumentLM.load(checkpoints[0])
    from instrumentgen.pretrained.clap import Clap
    from instrumentgen.pretrained.codec import Codec

    clap, codec = Clap.load(cfg.clap), Codec.load(cfg.codec)
    cue = clap.embed_audio(torch.from_numpy(instrument.audio)[instrument.reference_index()][None], 44100)[0]
    audio = generate_instrument(
        lm,
        codec,
        clap,
        InstrumentCue(clap_embedding=cue),
        cfg.generate,
        0.5,
        list(zip(instrument.pitches, instrument.velocities)),
    ).audio
    want_tc, pitch, want_clap = direct_scores(cfg, audio, instrument, clap)
    row = first["instruments"][0]
    assert row["tc"] == pytest.approx(want_tc, rel=1e-4)
    assert row["unvoiced"] == pitch.unvoiced
    assert row["mad_pitch"] == (
        None if pitch.unvoiced == len(PITCHES) * len(VELOCITIES) else pytest.approx(pitch.mad_pitch, abs=1e-4)
    )
    assert row["clap"] == pytest.approx(want_clap, abs=1e-4)


def test_test_instruments_hold_their_notes_at_44k(test_set):
    cfg = load_config("tiny", [f"data.source={test_set}"])
    instruments = load_test_instruments(cfg)
    assert len(instruments) == 2
    for instrument in instruments:
        assert instrument.audio.shape == (8, round(cfg.data.note_duration_s * 44100))
        assert list(zip(instrument.pitches, instrument.velocities)) == [(p, v) for p in PITCHES for v in VELOCITIES]
        reference = instrument.reference_index()
        assert (instrument.pitches[reference], instrument.velocities[reference]) == (60, 127)


def test_models_are_named_by_label_or_the_shortest_distinct_path():
    models = evaluate.models_from(["runs/a/model.pt", "runs/b/model.pt", "clap=s3://x/c.pt", "ground_truth"])
    assert [(m.name, m.folder) for m in models] == [
        ("a/model.pt", "a_model.pt"),
        ("b/model.pt", "b_model.pt"),
        ("clap", "clap"),
        ("ground truth", "ground_truth"),
    ]
    assert evaluate.models_from(["s3://bucket/run/export.pt"])[0].name == "export.pt"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["checkpoint=ground_truth"], "out= is required; allowed: out=<folder or URL>"),
        (["out=x"], "checkpoints= is required"),
        (["out=x", "checkpoint=nowhere.pt"], "checkpoint='nowhere.pt' does not exist"),
        (["out=x", "checkpoints=ground_truth,nowhere.pt"], "checkpoint='nowhere.pt' does not exist"),
        (["out=x", "checkpoint=ground_truth", "checkpoints=ground_truth"], "both given"),
        (["out=x", "checkpoints=ground_truth,ground_truth"], "gives two models one name"),
        (["out=x", "checkpoint=ground_truth", "actors=two"], "actors='two' is not allowed"),
        (
            ["out=x", "checkpont=ground_truth"],
            "argument checkpont= is unknown; allowed: out=<folder or URL>, checkpoints=",
        ),
        (["out=x", "checkpoint=ground_truth", "metrics.fad_embedder=mfcc"], "metrics.fad_embedder"),
        (["out=x", "checkpoint=ground_truth", "metrics.eval_cue=text"], "metrics.eval_cue='text' is not allowed"),
    ],
)
def test_bad_arguments_fail_in_one_line(test_set, argv, message, capsys):
    assert evaluate.main([*overrides(test_set), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_missing_weights_fail_in_one_line_naming_the_key(ray_local, cache, test_set, tmp_path, capsys):
    argv = [*overrides(test_set), "checkpoint=ground_truth", f"out={tmp_path}", "metrics.vggish_weights=vggish"]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: VGGish weights are not on this machine") and "metrics.vggish_weights=" in err
    assert err.count("\n") == 1


def run_job(*argv):
    return subprocess.run([sys.executable, "-m", "jobs.evaluate", *argv], capture_output=True, text=True, timeout=300)


CASES = ["missing checkpoint", "corrupt checkpoint", "missing data"]


@pytest.mark.parametrize("case", CASES)
def test_the_job_fails_in_one_line_with_exit_code_2(test_set, tmp_path, case, capsys):
    """In this process, except the corrupt checkpoint: a real process, whose whole stderr is the one line."""
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    argv = {
        "missing checkpoint": [f"data.source={test_set}", f"checkpoint={tmp_path / 'none.pt'}"],
        "corrupt checkpoint": [f"data.source={test_set}", f"checkpoint={corrupt}"],
        "missing data": ["data.source=/nonexistent", "checkpoint=ground_truth"],
    }[case]
    argv = ["config=tiny", f"out={tmp_path / 'out'}", *argv]
    if case == "corrupt checkpoint":
        done = run_job(*argv)
        code, err = done.returncode, done.stderr
    else:
        code, err = evaluate.main(argv), capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    named = "data.source='/nonexistent'" if case == "missing data" else "checkpoint="
    assert err.startswith("error: ") and named in err
    if case == "corrupt checkpoint":
        assert "is not an InstrumentLM checkpoint" in err and "weights_only" not in err
