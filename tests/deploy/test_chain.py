"""The deployment's chain: stage_weights -> preprocess -> train export -> evaluate -> render -> RayService,
each stage reading exactly what the one before writes, all under the one bucket of deploy/values.yaml."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from deploy import render
from instrumentgen import storage
from instrumentgen.config import Config, load_config, split_overrides
from instrumentgen.pretrained.staged import staged_overrides
from instrumentgen.training.checkpoint import MODEL

OWN_ARGUMENTS = {"checkpoint", "checkpoints", "prompts", "out", "actors"}  # the jobs' own key=value arguments
WEIGHT_KEYS = ("codec.weights", "clap.weights", "clap.tokenizer", "metrics.vggish_weights")


def stages(values: dict[str, str]) -> dict[str, tuple[dict[str, str], Config]]:
    """{job module or "serve": (own arguments, config)} of the manifests rendered with `values`."""
    rendered = render.render(values)
    found = {}
    for path, text in rendered.items():
        resource = yaml.safe_load(text)
        if path == "serve/config.yaml":
            (app,) = resource["applications"]
            env = app["runtime_env"]["env_vars"]
            found["serve"] = ({}, load_config(env["INSTRUMENTGEN_CONFIG"], shlex.split(env["INSTRUMENTGEN_OVERRIDES"])))
        elif resource["kind"] == "RayJob":
            words = shlex.split(resource["spec"]["entrypoint"])
            own = dict(word.split("=", 1) for word in words[3:] if word.split("=", 1)[0] in OWN_ARGUMENTS)
            name, overrides = split_overrides([word for word in words[3:] if word.split("=", 1)[0] not in own])
            found[words[2]] = (own, load_config(name, overrides))
    return found


def weights(cfg: Config) -> dict[str, str]:
    return {
        "codec.weights": cfg.codec.weights,
        "clap.weights": cfg.clap.weights,
        "clap.tokenizer": cfg.clap.tokenizer,
        "metrics.vggish_weights": cfg.metrics.vggish_weights,
    }


@pytest.mark.parametrize("bucket", ["s3://instrumentgen", "s3://another-bucket/some/prefix"])
def test_each_stage_reads_what_the_previous_one_writes(bucket):
    values = {**render.read_values(), "bucket": bucket}
    found = stages(values)
    assert set(found) == {"jobs.preprocess", "jobs.train", "jobs.evaluate", "jobs.render", "serve"}
    staged = staged_overrides(bucket)  # what jobs.stage_weights writes
    assert set(staged) == set(WEIGHT_KEYS)
    for stage in ("jobs.preprocess", "jobs.evaluate", "jobs.render", "serve"):
        assert weights(found[stage][1]) == staged, stage
    shards = found["jobs.preprocess"][1].data.shards
    train = found["jobs.train"][1].train
    assert found["jobs.train"][1].data.shards == shards
    model = storage.join(train.storage_path, train.run_name, MODEL)  # what jobs.train exports
    assert model == f"{bucket}/runs/{values['run']}/model.pt"
    assert found["jobs.evaluate"][0]["checkpoints"] == f"{values['run']}={model},ground_truth"
    assert found["jobs.render"][0]["checkpoint"] == model
    assert found["serve"][1].serve.checkpoint == model
    assert found["jobs.evaluate"][1].data.source == f"{bucket}/nsynth/nsynth-test.tfrecord"
    assert found["jobs.preprocess"][1].data.source == f"{bucket}/nsynth/nsynth-train.tfrecord"


def test_the_bucket_in_one_place_changes_every_manifest():
    default = render.read_values()["bucket"]
    rendered = render.render(render.read_values(["bucket=s3://elsewhere/pfx", "run=r2"]))
    every_url = []
    for path, text in rendered.items():
        assert default not in text, path
        every_url += re.findall(r"s3://[^\s,\"]+", text)
    assert every_url and all(f"{url}/".startswith("s3://elsewhere/pfx/") for url in every_url)
    # every file that names a URL at all: the jobs, the RayService, serve/config.yaml, the ServiceAccount's comment
    assert {path for path, text in rendered.items() if "s3://elsewhere/pfx/" in text} >= {
        "deploy/k8s/preprocess.rayjob.yaml",
        "deploy/k8s/train.rayjob.yaml",
        "deploy/k8s/evaluate.rayjob.yaml",
        "deploy/k8s/render.rayjob.yaml",
        "deploy/k8s/serve.rayservice.yaml",
        "serve/config.yaml",
    }
    assert "s3://elsewhere/pfx/runs/r2/model.pt" in rendered["deploy/k8s/serve.rayservice.yaml"]


def test_the_bucket_is_named_nowhere_else():
    default = render.read_values()["bucket"]
    sources = [render.REPO / "instrumentgen" / "configs", render.TEMPLATES, render.REPO / "jobs"]
    for folder in sources:
        for path in folder.rglob("*"):
            if path.suffix in (".yaml", ".py"):
                assert default not in path.read_text(), path


def test_bad_values_are_one_line(capsys):
    assert render.main(["--check", "bukket=s3://x"]) == 2
    assert capsys.readouterr().err == (
        "error: argument 'bukket=s3://x' is not allowed; allowed: bucket=, run=, image=, role_arn=\n"
    )
    assert render.main(["--check", "bucket="]) == 2
    assert "bucket is empty" in capsys.readouterr().err


def test_entrypoint_prints_a_rayjobs_command_for_ray_job_submit(capsys):
    assert render.main(["--entrypoint", "train", "bucket=s3://b2"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("python -m jobs.train config=paper data.shards=s3://b2/shards ")
    assert render.main(["--entrypoint", "serve"]) == 2
    assert "allowed: evaluate, preprocess, render, train" in capsys.readouterr().err
