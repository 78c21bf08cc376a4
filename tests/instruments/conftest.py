"""Fixtures of the instrument tests: a tiny random-init checkpoint, a loaded Renderer, S3 request counting."""

from __future__ import annotations

import collections

import pytest
import torch

from instrumentgen.config import load_config


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, cache):
    """An exported tiny InstrumentLM (random init, seed 0)."""
    from instrumentgen.model.lm import InstrumentLM

    torch.manual_seed(0)
    return InstrumentLM(load_config("tiny").model).save(str(tmp_path_factory.mktemp("ckpt") / "model.pt"))


@pytest.fixture(scope="module")
def tiny_renderer(tiny_checkpoint):
    """A Renderer of the tiny checkpoint under the tiny config, models loaded once per module."""
    from instrumentgen.instruments.render import Renderer

    return Renderer(load_config("tiny"), tiny_checkpoint)


@pytest.fixture
def s3_requests(monkeypatch):
    """A Counter of the S3 operations this process sends (one per HTTP request unless s3fs retries one)."""
    import s3fs

    counts: collections.Counter = collections.Counter()
    original = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        counts[method if isinstance(method, str) else method.__name__] += 1
        return await original(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
    return counts
