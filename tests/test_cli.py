import subprocess
import sys

from instrumentgen import cli, nsynth


def test_config_prints_resolved_yaml(capsys):
    assert cli.main(["config", "tiny", "model.num_layers=3"]) == 0
    out = capsys.readouterr().out
    assert "num_layers: 3" in out and "weights: tiny" in out


def test_bad_override_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "instrumentgen.cli", "config", "tiny", "train.zero_stage=7"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: train.zero_stage=7 is not allowed; allowed: 0, 1, 2, 3"


def test_fixture_writes_readable_sets(tmp_path, capsys):
    assert cli.main(["fixture", str(tmp_path), "--instruments", "2", "--formats", "tfrecord"]) == 0
    assert capsys.readouterr().out.strip() == f"tfrecord: {tmp_path}/nsynth.tfrecord"
    assert len(list(nsynth.iter_notes(f"{tmp_path}/nsynth.tfrecord"))) == 2 * 5 * 2


def test_generate_writes_a_playable_instrument_from_a_checkpoint(tmp_path, capsys):
    import torch

    from instrumentgen.config import load_config
    from instrumentgen.instrument import Instrument
    from instrumentgen.model.lm import InstrumentLM

    torch.manual_seed(0)
    InstrumentLM(load_config("tiny").model).save(str(tmp_path / "model.pt"))
    out = tmp_path / "brass"
    assert cli.main(["generate", str(tmp_path / "model.pt"), "data.note_duration_s=0.1", "generate.batch_size=220",
                     "--family", "brass", "--out", str(out)]) == 0
    assert f"wrote 440 notes, instrument.sfz and instrument.dspreset to {out}" in capsys.readouterr().out
    instrument = Instrument.read(str(out))
    assert instrument.audio.shape == (440, 4410) and instrument.metadata["family"] == "brass"


def test_generate_reports_a_bad_cue_in_one_line(tmp_path, capsys):
    assert cli.main(["generate", str(tmp_path / "missing.pt"), "--family", "brass", "--out", str(tmp_path)]) == 2
    assert "error: checkpoint=" in capsys.readouterr().err
