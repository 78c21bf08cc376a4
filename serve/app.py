"""Builds the Serve application: Ingress -> Generator (autoscaled) + Scorer, options from `cfg.serve`.

    serve run serve.app:app                       # $INSTRUMENTGEN_CONFIG (default tiny) + $INSTRUMENTGEN_OVERRIDES
    serve deploy serve/config.yaml                # a cluster: the same import path, options in the YAML

`build_app(cfg)` is what tests and benchmarks call with a config of their own.
"""

from __future__ import annotations

import os
import shlex

from ray.serve import Application

from instrumentgen.config import Config, load_config
from serve.generator import Generator
from serve.ingress import Ingress
from serve.scorer import Scorer

CONFIG_ENV, OVERRIDES_ENV = "INSTRUMENTGEN_CONFIG", "INSTRUMENTGEN_OVERRIDES"


def build_app(cfg: Config) -> Application:
    """The application graph with replicas, queues and resources from `cfg.serve`."""
    limits = cfg.serve
    generator = Generator.options(
        autoscaling_config={
            "min_replicas": limits.min_replicas,
            "max_replicas": limits.max_replicas,
            "target_ongoing_requests": limits.target_ongoing_requests,
        },
        max_ongoing_requests=limits.max_ongoing_requests,
        max_queued_requests=limits.max_queued_requests,
        ray_actor_options={"num_cpus": limits.num_cpus, "num_gpus": limits.num_gpus},
    ).bind(cfg)
    scorer = Scorer.options(num_replicas=1, ray_actor_options={"num_cpus": limits.scorer_num_cpus, "num_gpus": 0})
    ingress = Ingress.options(
        num_replicas=limits.ingress_replicas,
        max_ongoing_requests=256,
        ray_actor_options={"num_cpus": limits.ingress_num_cpus, "num_gpus": 0},
    )
    return ingress.bind(generator, scorer.bind(), cfg)


def config_from_env() -> Config:
    """$INSTRUMENTGEN_CONFIG (a name or YAML path, default tiny) with $INSTRUMENTGEN_OVERRIDES (key=value ...)."""
    return load_config(os.environ.get(CONFIG_ENV, "tiny"), shlex.split(os.environ.get(OVERRIDES_ENV, "")))


app = build_app(config_from_env())
