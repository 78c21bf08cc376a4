"""The `main` every Ray job shares: arguments -> one-line errors (exit 2) -> Ray -> the job."""
from __future__ import annotations

import sys
from typing import Callable, Sequence

import ray

from instrumentgen.config import Config, ConfigError, load_config, split_overrides


def config_from_argv(argv: Sequence[str], check: Callable[[Config], object] = lambda cfg: None) -> tuple[Config]:
    """`config=<name> key=value ...` -> (cfg,), after `check(cfg)` (which raises ConfigError)."""
    name, overrides = split_overrides(argv)
    cfg = load_config(name, overrides)
    check(cfg)
    return (cfg,)


def job_main(argv: Sequence[str] | None, parse: Callable[[Sequence[str]], tuple], run: Callable[..., object]) -> int:
    """Parse before starting Ray so bad input fails in a second; a ConfigError anywhere is one line."""
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        if not ray.is_initialized():
            ray.init()  # joins the cluster of `ray job submit` (RAY_ADDRESS), else starts a local one
        run(*args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
