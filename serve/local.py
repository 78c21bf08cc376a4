"""The application on this machine (tests, benchmarks): Serve on a free loopback port, and a client-side wait."""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Iterator

import requests
from ray import serve
from tqdm.auto import tqdm

from instrumentgen.config import Config

NOT_YET_S = 30  # how long after the POST a 404 means "not visible yet" to `wait_done`


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(cfg: Config, name: str = "instrumentgen") -> Iterator[str]:
    """Serve `build_app(cfg)` on 127.0.0.1 (a free port) in the running Ray; yields the base URL and
    shuts Serve down afterwards."""
    from serve.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(cfg), name=name, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def replica_pid(deployment: str) -> int:
    """The process id of the one replica of `deployment` in the running Ray (to SIGKILL it in tests and
    benchmarks of what survives what)."""
    import os

    import ray

    (actor,) = [a for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"]]
    handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
    return ray.get(handle.__ray_call__.remote(lambda self: os.getpid()))


def wait_done(
    base: str,
    instrument: str,
    timeout_s: float = 300,
    headers: dict | None = None,
    poll_s: float = 0.5,
    progress: bool = False,
) -> dict:
    """Poll GET /v1/instruments/{id} until done or failed (a bar of notes with `progress`);
    `TimeoutError` after `timeout_s`."""
    started = time.time()
    deadline = started + timeout_s
    status = None
    with tqdm(desc="notes", unit="note", disable=not progress) as bar:
        while time.time() < deadline:
            answer = requests.get(f"{base}/v1/instruments/{instrument}", headers=headers, timeout=30)
            # Every ingress busy (503, Retry-After), or a status not yet visible to the replica that answered
            # just after the POST (404 in the first seconds): ask again.
            if answer.status_code == 503 or (answer.status_code == 404 and time.time() < started + NOT_YET_S):
                time.sleep(poll_s)
                continue
            if answer.status_code != 200:
                raise RuntimeError(f"GET of instrument {instrument}: {answer.status_code} {answer.text[:300]}")
            status = answer.json()
            bar.total = status.get("notes_total") or bar.total
            bar.update(status.get("notes_done", 0) - bar.n)
            if status["status"] in ("done", "failed"):
                return status
            time.sleep(poll_s)
    raise TimeoutError(f"instrument {instrument} not finished after {timeout_s} s: {status}")
