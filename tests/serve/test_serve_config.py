"""serve/config.yaml is what `serve deploy` accepts, and it names the application's real parts."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

CONFIG = Path(__file__).parents[2] / "serve" / "config.yaml"


def _options(deployment) -> dict:
    options = deployment.ray_actor_options
    return options if isinstance(options, dict) else options.model_dump(exclude_unset=True)


def test_config_parses_with_serves_schema_and_names_the_real_import_path():
    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (application,) = schema.applications
    module, attribute = application.import_path.split(":")
    assert isinstance(getattr(importlib.import_module(module), attribute), Application)
    names = {d.name for d in application.deployments}
    assert names == {"Ingress", "Generator", "Scorer"}
    for deployment in application.deployments:  # a partial ray_actor_options would replace the whole dict
        assert {"num_cpus", "num_gpus"} <= set(_options(deployment))
    generator = next(d for d in application.deployments if d.name == "Generator")
    assert _options(generator)["num_gpus"] == 1 and generator.autoscaling_config["max_replicas"] > 1
    assert generator.max_queued_requests > 0 and generator.max_ongoing_requests >= 1
