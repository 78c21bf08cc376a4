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
