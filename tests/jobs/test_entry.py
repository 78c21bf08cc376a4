import pytest

from instrumentgen.config import ConfigError
from jobs.entry import parse_job_args

REQUIRED = {"out": "<folder or URL>"}
OPTIONAL = {"actors": "<whole number>"}


def test_own_keys_are_split_from_the_config_and_its_overrides():
    own, cfg = parse_job_args(["config=tiny", "out=s3://b/x=y", "model.num_layers=3", "seed=7"], REQUIRED, OPTIONAL)
    assert own == {"out": "s3://b/x=y", "actors": None}
    assert cfg.name == "tiny" and cfg.model.num_layers == 3 and cfg.seed == 7


@pytest.mark.parametrize(
    "argv, message",
    [
        (["actors=2"], "out= is required; allowed: out=<folder or URL>"),
        (["out=a", "out=b"], "out= is given twice; allowed: once"),
        (
            ["out=a", "outt=b"],
            "argument outt= is unknown; allowed: out=<folder or URL>, actors=<whole number>, "
            "config=<name> and config overrides such as model.num_layers=4",
        ),
        (["out=a", "model.nope=1"], "model.nope: Key 'nope' not in 'ModelConfig'"),
        (["out=a", "loose"], "argument 'loose' is not key=value"),
    ],
)
def test_bad_arguments_name_the_key_and_the_allowed_ones(argv, message):
    with pytest.raises(ConfigError) as e:
        parse_job_args(["config=tiny", *argv], REQUIRED, OPTIONAL)
    assert str(e.value).startswith(message)
