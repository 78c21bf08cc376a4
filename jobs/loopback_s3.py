"""An S3 server on this machine for tests, benchmarks and the paper check: moto on 127.0.0.1, and the
environment that points boto3 / s3fs (and the Ray workers started after it) at it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Iterator


def s3_env(endpoint: str) -> dict[str, str]:
    """The variables that send every S3 client in this process and its children to `endpoint`."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
    }


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`os.environ` updated with `values` inside the block, each variable restored (or removed) after."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def moto_server(log_path: "str | os.PathLike", start_timeout_s: float = 60) -> Iterator[tuple[str, int]]:
    """moto's S3 server in its own process on a free 127.0.0.1 port, its output in `log_path`;
    yields (endpoint URL, its pid) once it accepts connections, and stops it after the block.
    The environment is left alone: wrap the block's work in `environment(s3_env(endpoint))`."""
    from serve.local import free_port

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
        )
    try:
        deadline = time.time() + start_timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"moto_server did not start on {endpoint}; see {log_path}") from None
                time.sleep(0.2)
        yield endpoint, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)
