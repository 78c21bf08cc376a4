"""Ray job entry points (`python -m jobs.<name>`).

Importing the package, before any job imports Ray, gives a run on this machine the environment of
`jobs/local.env` (loopback only, offline); a job submitted to a cluster (`RAY_ADDRESS` set) keeps
the cluster's environment.
"""

from __future__ import annotations

import os
from pathlib import Path

LOCAL_ENV_FILE = Path(__file__).with_name("local.env")


def local_env() -> dict[str, str]:
    """The variables of `jobs/local.env`."""
    lines = (line.strip() for line in LOCAL_ENV_FILE.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def use_local_env() -> None:
    """Set every variable of `jobs/local.env` that the environment does not already set."""
    for key, value in local_env().items():
        os.environ.setdefault(key, value)


if not os.environ.get("RAY_ADDRESS"):
    use_local_env()
