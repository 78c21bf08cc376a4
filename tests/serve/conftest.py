"""A real Serve application on 127.0.0.1 per test module: tiny config, an untrained tiny checkpoint."""
from __future__ import annotations

import contextlib
import socket
import time

import pytest
import requests
import torch

from instrumentgen.clap import Clap
from instrumentgen.codec import Codec
from instrumentgen.config import load_config
from instrumentgen.model.lm import InstrumentLM

API_KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """An untrained tiny InstrumentLM saved like jobs.train exports it; tiny codec/CLAP files made once."""
    cfg = load_config("tiny")
    Codec.load(cfg.codec.weights), Clap.load(cfg.clap)  # write the tiny weight files before replicas race for them
    torch.manual_seed(0)
    return InstrumentLM(cfg.model).save(str(tmp_path_factory.mktemp("ckpt") / "model.pt"))


@contextlib.contextmanager
def serving(ray, overrides: list[str]):
    """Serve on a free loopback port running `serve.app.build_app(load_config("tiny", overrides))`;
    yields (base_url, cfg); shuts Serve down afterwards."""
    from ray import serve

    from serve.app import build_app

    cfg = load_config("tiny", overrides)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name="instrumentgen", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    try:
        yield base, cfg
    finally:
        serve.shutdown()


def wait_done(base: str, instrument: str, timeout_s: float = 300, headers=None) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = requests.get(f"{base}/v1/instruments/{instrument}", headers=headers, timeout=30).json()
        if status["status"] in ("done", "failed"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"instrument {instrument} not finished after {timeout_s} s: {status}")
