"""What every Ray job shares: arguments -> one-line errors (exit 2) -> Ray -> the job.

`job_main` parses before starting Ray, so bad input fails in a second, and prints any
`UserError` as one line with exit code 2; anything else is a bug and keeps its traceback.
`parse_job_args` reads a job's own `key=value` arguments beside the config and its overrides.
`local_ray` gives a block the running Ray, the cluster of `RAY_ADDRESS`, or a fresh local one
on 127.0.0.1 that it shuts down afterwards (the demo, the benchmarks and the tests use it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Callable, Iterator, Sequence

import ray

from instrumentgen.config import Config, ConfigError, load_config, split_overrides
from instrumentgen.errors import exit_code


def config_from_argv(argv: Sequence[str], check: Callable[[Config], object] = lambda cfg: None) -> tuple[Config]:
    """`config=<name> key=value ...` -> (cfg,), after `check(cfg)` (which raises ConfigError)."""
    name, overrides = split_overrides(argv)
    cfg = load_config(name, overrides)
    check(cfg)
    return (cfg,)


def parse_job_args(
    argv: Sequence[str], required: dict[str, str], optional: dict[str, str] | None = None
) -> tuple[dict[str, str | None], Config]:
    """A job's own `key=value` arguments + `config=<name>` and config overrides -> (own values, cfg).

    required / optional: {key: what it takes}, e.g. {"out": "<folder or URL>"}, used in the errors.
    Own values are strings as given (an optional key not given: None); the job converts them.
    Any other argument is a config override: a dotted key (model.num_layers=4) or a top-level
    field of `Config` (seed=1). `ConfigError` names a missing required key, an own key given
    twice, or an unknown key, with the allowed ones.
    """
    own_keys = {**required, **(optional or {})}
    own: dict[str, str | None] = dict.fromkeys(own_keys)
    rest = []
    for arg in argv:
        key, is_pair, value = arg.partition("=")
        if key in own_keys and is_pair:
            if own[key] is not None:
                raise ConfigError(f"{key}= is given twice; allowed: once")
            own[key] = value
        elif is_pair and "." not in key and key != "config" and key not in {f.name for f in dataclasses.fields(Config)}:
            allowed = ", ".join(f"{k}={what}" for k, what in own_keys.items())
            raise ConfigError(
                f"argument {key}= is unknown; allowed: {allowed}, config=<name> and config overrides "
                "such as model.num_layers=4"
            )
        else:
            rest.append(arg)
    for key, what in required.items():
        if not own[key]:
            raise ConfigError(f"{key}= is required; allowed: {key}={what}")
    name, overrides = split_overrides(rest)
    return own, load_config(name, overrides)


def start_ray(num_cpus: int | None = None, quiet: bool = False) -> None:
    """Join the cluster of `RAY_ADDRESS` (`ray job submit` sets it), else start a local Ray on 127.0.0.1.

    quiet: no worker output on this console and Ray's own logging left alone (tests, benchmarks).
    """
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=not quiet,
        configure_logging=not quiet,
    )


@contextlib.contextmanager
def local_ray(num_cpus: int | None = None, quiet: bool = True) -> Iterator[None]:
    """Ray for the duration of a block: the one already running, else one started (and shut down) here."""
    started = not ray.is_initialized()
    if started:
        start_ray(num_cpus, quiet)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def job_main(argv: Sequence[str] | None, parse: Callable[[Sequence[str]], tuple], run: Callable[..., object]) -> int:
    """Parse `argv` (default: the command line), start Ray, run; a `UserError` anywhere is one line and exit 2."""

    def parse_then_run() -> None:
        args = parse(sys.argv[1:] if argv is None else argv)
        if not ray.is_initialized():
            start_ray()
        run(*args)

    return exit_code(parse_then_run)
