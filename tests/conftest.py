"""Shared fixtures: offline environment, one local Ray for the session, a real S3 server on loopback."""

from __future__ import annotations

import os

# Before anything imports transformers / laion_clap / ray: tests run on this machine only, whatever
# the shell says; importing `jobs` then applies jobs/local.env (no hub calls, loopback only).
os.environ.pop("RAY_ADDRESS", None)

import pytest

import jobs  # noqa: E402,F401
from jobs.loopback_s3 import environment, moto_server, s3_env  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """An empty weights cache for one test module, so tiny weight files are really written and read back."""
    root = tmp_path_factory.mktemp("weights-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INSTRUMENTGEN_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray for the whole session: 2 CPUs, no dashboard, everything on 127.0.0.1.

    Started after the S3 server so that its workers inherit the loopback endpoint variables."""
    import ray

    from jobs.entry import local_ray

    with local_ray(num_cpus=2):
        yield ray


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (moto_server) on 127.0.0.1; yields its endpoint URL.

    Sets the AWS variables so that s3fs / boto3 in this process and in Ray workers started
    after it talk to this server only.
    """
    with moto_server(str(tmp_path_factory.mktemp("moto") / "moto.log")) as (endpoint, _):
        with environment(s3_env(endpoint)):
            yield endpoint


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the loopback S3 server; yields `s3://<bucket>`."""
    import s3fs

    name = (
        "t-"
        + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40]
        + f"-{os.getpid() % 10000}"
    )
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.mkdir(name)
    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{name}"
