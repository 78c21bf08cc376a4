import subprocess
import sys

import pytest

from instrumentgen import cli
from instrumentgen.data import nsynth


def test_config_prints_resolved_yaml(capsys):
    assert cli.main(["config", "tiny", "model.num_layers=3"]) == 0
    out = capsys.readouterr().out
    assert "num_layers: 3" in out and "weights: tiny" in out


def test_bad_override_exits_2_with_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "instrumentgen.cli", "config", "tiny", "train.zero_stage=7"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: train.zero_stage=7 is not allowed; allowed: 0, 1, 2, 3"


def test_fixture_writes_readable_sets(tmp_path, capsys):
    assert cli.main(["fixture", str(tmp_path), "--instruments", "2", "--formats", "tfrecord"]) == 0
    assert capsys.readouterr().out.strip() == f"tfrecord: {tmp_path}/nsynth.tfrecord"
    assert len(list(nsynth.iter_notes(f"{tmp_path}/nsynth.tfrecord"))) == 2 * 5 * 2


def test_generate_writes_a_playable_instrument_from_a_checkpoint(tmp_path, capsys):
    import torch

    from instrumentgen.config import load_config
    from instrumentgen.instruments.instrument import Instrument
    from instrumentgen.model.lm import InstrumentLM

    torch.manual_seed(0)
    InstrumentLM(load_config("tiny").model).save(str(tmp_path / "model.pt"))
    out = tmp_path / "brass"
    assert (
        cli.main(
            [
                "generate",
                str(tmp_path / "model.pt"),
                "data.note_duration_s=0.1",
                "generate.batch_size=220",
                "--family",
                "brass",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert f"wrote 440 notes, instrument.sfz and instrument.dspreset to {out}" in capsys.readouterr().out
    instrument = Instrument.read(str(out))
    assert instrument.audio.shape == (440, 4410) and instrument.metadata["family"] == "brass"


def test_generate_reports_a_bad_cue_in_one_line(tmp_path, capsys):
    assert cli.main(["generate", str(tmp_path / "missing.pt"), "--family", "brass", "--out", str(tmp_path)]) == 2
    assert "error: checkpoint=" in capsys.readouterr().err


def _checkpoint(path):
    import torch

    from instrumentgen.config import load_config
    from instrumentgen.model.lm import InstrumentLM

    torch.manual_seed(0)
    InstrumentLM(load_config("tiny").model).save(str(path))
    return str(path)


def _generate(*args, env=None):
    proc = subprocess.run(
        [sys.executable, "-m", "instrumentgen.cli", "generate", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return proc.returncode, proc.stderr.strip().splitlines()


def test_overrides_after_options_are_overrides(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path / "model.pt")
    out = tmp_path / "keys"
    assert (
        cli.main(
            [
                "generate",
                checkpoint,
                "--family",
                "brass",
                "--out",
                str(out),
                "data.note_duration_s=0.1",
                "generate.seed=5",
                "generate.top_k=5",
            ]
        )
        == 0
    )
    from instrumentgen.instruments.instrument import Instrument

    assert Instrument.read(str(out)).metadata["seed"] == 5  # the config's seed when --seed is not given
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", checkpoint, "--out", str(out), "--bogus"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_every_user_error_of_generate_is_one_line_with_exit_2(tmp_path, s3_server, capsys):
    import os

    checkpoint = _checkpoint(tmp_path / "model.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint" * 128)  # fixed bytes: one pickle error
    (tmp_path / "a-file").write_text("not a folder")
    base = [checkpoint, "--family", "brass", "data.note_duration_s=0.05", "generate.batch_size=440"]
    no_credentials = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    no_credentials.update(
        AWS_ENDPOINT_URL=s3_server,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
    )
    cases = [
        (
            [*base, "--out", str(tmp_path / "o"), "model.bogus=1"],
            None,
            "error: model.bogus: Key 'bogus' not in 'ModelConfig'",
        ),
        (
            ["--out", str(tmp_path / "o"), *base, "generate.top_k=-1"],
            None,
            "error: generate.top_k=-1 is out of range; allowed: [0, inf]",
        ),
        (
            ["--out", str(tmp_path / "o"), *base, "codec.weights=/missing/dac.pth"],
            None,
            "error: codec.weights='/missing/dac.pth': no such file; give an existing local path or fsspec URL",
        ),
        (
            [str(tmp_path / "corrupt.pt"), "--family", "brass", "--out", str(tmp_path / "o")],
            None,
            f"error: checkpoint='{tmp_path}/corrupt.pt' is not an InstrumentLM checkpoint (UnpicklingError: ",
        ),
        (
            ["--out", "s3://no-credentials/brass", *base],
            no_credentials,
            "error: cannot write to 's3://no-credentials/brass': no credentials for it; ",
        ),
        (
            ["--out", str(tmp_path / "a-file" / "brass"), *base],
            None,
            f"error: cannot write to '{tmp_path}/a-file/brass': a file stands where its path needs a folder",
        ),
    ]
    for args, env, expected in cases:
        # A process of its own where the environment differs (s3fs keeps credentials per process);
        # the others through the same `main` in this process.
        if env is not None:
            code, lines = _generate(*args, env=env)
        else:
            code, lines = cli.main(["generate", *args]), capsys.readouterr().err.strip().splitlines()
        assert code == 2 and lines[-1].startswith(expected) and not any("Traceback" in line for line in lines), lines
