"""The evaluation job end to end on the tiny config: ground truth and a saved random-init checkpoint."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from instrumentgen.config import load_config
from instrumentgen.evaluation import load_test_instruments
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.testing import write_fixture_nsynth
from jobs import evaluate

PITCHES = [36, 48, 60, 72]
VELOCITIES = [50, 127]


@pytest.fixture(scope="module")
def test_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsynth-test")
    return write_fixture_nsynth(str(root), 2, PITCHES, VELOCITIES, ("jsonwav",))["jsonwav"]


def overrides(test_set):
    return ["config=tiny", f"data.source={test_set}", "data.note_duration_s=0.5"]


def test_ground_truth_table_figures_and_a_resumed_rerun(ray_local, cache, test_set, tmp_path, capsys):
    out = str(tmp_path / "gt")
    assert evaluate.main([*overrides(test_set), "checkpoint=ground_truth", f"out={out}"]) == 0
    results = json.loads((tmp_path / "gt" / "results.json").read_text())
    assert results["model"] == "ground truth" and results["fad_embedder"] == "vggish"
    assert results["fad"] == pytest.approx(0.0, abs=1e-6)  # the real notes against themselves
    names = [row["name"] for row in results["instruments"]]
    assert len(names) == 2
    for row in results["instruments"]:
        assert row["mad_pitch"] < 0.1 and row["unvoiced"] == 0  # fixture notes are in tune
        assert row["clap"] > 0 and 0 < row["tc"] < 10
        arrays = np.load(tmp_path / "gt" / "instruments" / f"{row['name']}.npz")
        assert arrays["tc_matrix"].shape == (8, 8) and arrays["embeddings"].shape[0] == 8
        for figure in ("tc", "pitch"):
            with Image.open(tmp_path / "gt" / "figures" / f"{row['name']}_{figure}.png") as image:
                assert image.size[0] > 300
    table = (tmp_path / "gt" / "results.md").read_text()
    assert "| ground truth |" in table and all(f"| {name} |" in table for name in names)
    assert f"{results['mean_tc']:.3f}" in table

    # A re-run finds every instrument scored and only rewrites the tables.
    capsys.readouterr()
    stamp = (tmp_path / "gt" / "instruments" / f"{names[0]}.npz").stat().st_mtime_ns
    assert evaluate.main([*overrides(test_set), "checkpoint=ground_truth", f"out={out}"]) == 0
    assert "2 already scored" in capsys.readouterr().out
    assert (tmp_path / "gt" / "instruments" / f"{names[0]}.npz").stat().st_mtime_ns == stamp


def test_a_checkpoint_is_generated_and_scored_on_s3(ray_local, cache, test_set, tmp_path, s3_server):
    import fsspec

    cfg = load_config("tiny")
    torch.manual_seed(0)
    checkpoint = InstrumentLM(cfg.model).eval().save(str(tmp_path / "export.pt"))
    fs = fsspec.filesystem("s3")
    fs.mkdir("eval-bucket")
    out = "s3://eval-bucket/tiny"
    assert evaluate.main([*overrides(test_set), f"checkpoint={checkpoint}", f"out={out}", "actors=1"]) == 0
    results = json.loads(fs.cat(f"{out}/results.json"))
    assert results["model"] == "export.pt"
    assert results["fad"] > 0  # an untrained model does not sound like the test set
    assert len(results["instruments"]) == 2
    assert all(row["mad_pitch"] is None or row["mad_pitch"] >= 0 for row in results["instruments"])
    assert all(np.isfinite(row["tc"]) and row["tc"] > 0 for row in results["instruments"])
    assert fs.exists(f"{out}/figures/pitch_error.png") and fs.exists(f"{out}/results.md")


def test_test_instruments_hold_their_notes_at_44k(test_set):
    cfg = load_config("tiny", [f"data.source={test_set}"])
    instruments = load_test_instruments(cfg)
    assert len(instruments) == 2
    for instrument in instruments:
        assert instrument.audio.shape == (8, round(cfg.data.note_duration_s * 44100))
        assert list(zip(instrument.pitches, instrument.velocities)) == [(p, v) for p in PITCHES for v in VELOCITIES]
        reference = instrument.reference_index()
        assert (instrument.pitches[reference], instrument.velocities[reference]) == (60, 127)


@pytest.mark.parametrize("argv, message", [
    (["checkpoint=ground_truth"], "out= is required"),
    (["out=x", "checkpoint=nowhere.pt"], "checkpoint='nowhere.pt' does not exist"),
    (["out=x", "checkpoint=ground_truth", "actors=two"], "actors='two' is not allowed"),
    (["out=x", "checkpoint=ground_truth", "metrics.fad_embedder=mfcc"], "metrics.fad_embedder"),
])
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
