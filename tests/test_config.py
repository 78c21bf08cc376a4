import dataclasses

import pytest

from instrumentgen.config import ConfigError, config_hash, load_config, split_overrides


def test_tiny_and_paper_load_with_their_values():
    tiny = load_config("tiny")
    assert (tiny.codec.weights, tiny.clap.weights, tiny.model.dim) == ("tiny", "tiny", 64)
    paper = load_config("paper")
    assert (paper.model.num_layers, paper.model.num_heads, paper.model.dim) == (12, 16, 512)
    assert (paper.model.n_q, paper.model.card, paper.train.batch_size, paper.train.lr) == (4, 1024, 32, 1e-3)
    assert paper.train.max_steps == 1_000_000 and paper.model.family_dropout == 0.7


def test_paper_metadata_is_the_paper_model_conditioned_on_family_and_source():
    paper, metadata = load_config("paper"), load_config("paper_metadata")
    assert metadata.model.conditioning == "metadata" and paper.model.conditioning == "clap"
    assert metadata.name == "paper_metadata"
    as_clap = dataclasses.replace(metadata.model, conditioning="clap")
    assert dataclasses.replace(metadata, name="paper", model=as_clap) == paper


def test_overrides_apply_and_are_typed():
    cfg = load_config("tiny", ["model.num_layers=4", "train.lr=0.5", "generate.cfg_coef=1"])
    assert cfg.model.num_layers == 4 and cfg.train.lr == 0.5 and cfg.generate.cfg_coef == 1.0


def test_config_from_a_yaml_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nmodel:\n  dim: 32\n")
    cfg = load_config(str(path))
    assert cfg.name == "mine" and cfg.model.dim == 32 and cfg.model.num_layers == 12


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.nope=1", "model.nope: Key 'nope' not in 'ModelConfig'"),
        ("train.zero_stage=5", "train.zero_stage=5 is not allowed; allowed: 0, 1, 2, 3"),
        ("train.strategy=horovod", "train.strategy='horovod' is not allowed; allowed: 'deepspeed', 'ddp'"),
        ("model.dim=abc", "model.dim: Value 'abc' of type 'str' could not be converted to Integer"),
        ("data.note_duration_s=9", "data.note_duration_s=9.0 is out of range; allowed: [0.05, 4.0]"),
    ],
)
def test_bad_overrides_fail_with_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [override])
    assert str(e.value) == message


def test_unknown_config_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"config='huge' not found; allowed: base, paper, paper_metadata, tiny"):
        load_config("huge")


def test_split_overrides_and_hash():
    assert split_overrides(["config=tiny", "model.dim=8"]) == ("tiny", ["model.dim=8"])
    with pytest.raises(ConfigError, match="argument 'tiny' is not key=value"):
        split_overrides(["tiny"])
    assert config_hash(load_config("tiny")) == config_hash(load_config("tiny"))
    assert config_hash(load_config("tiny")) != config_hash(load_config("tiny", ["seed=1"]))
