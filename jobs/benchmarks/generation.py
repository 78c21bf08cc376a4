"""Generation speed: KV cache vs recomputing the prefix, batched CFG vs two forwards, tokens/s.

All rows generate at the paper's 348 decoding steps (345 frames = 4 s at 44.1 kHz, hop 512, plus
the 3 steps of the delay pattern) with CFG (coef 3) and top-k 250 sampling, random-init weights
(speed does not depend on their values). The no-cache baseline costs O(T^2) per note, so the
paper-config row uses a small batch; `--quick` also shortens the paper row to 120 steps.
"""
from __future__ import annotations

import time

import torch

from instrumentgen.config import load_config
from instrumentgen.cues import make_cues
from instrumentgen.model.lm import InstrumentLM

PAPER_FRAMES = 345  # ceil(4 s * 44100 / 512): 348 steps with K = 4


def _model(name: str) -> InstrumentLM:
    torch.manual_seed(0)
    return InstrumentLM(load_config(name, ["model.max_frames=512"]).model).eval()


def _cues(batch: int):
    pitches = [21 + (i * 7) % 88 for i in range(batch)]
    return make_cues(pitches, [100] * batch, clap_embedding=torch.randn(512))


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _row(benchmark: str, baseline: str, ours: str, baseline_s: float, ours_s: float, note: str) -> dict:
    return {"benchmark": benchmark, "baseline": baseline, "ours": ours, "baseline_s": baseline_s,
            "ours_s": ours_s, "ratio": baseline_s / ours_s, "note": note}


def cache_row(name: str, batch: int, frames: int) -> dict:
    lm, cues = _model(name), _cues(batch)
    lm.generate(cues, 4)  # warm-up: allocator, kernels
    cached_s = _seconds(lambda: lm.generate(cues, frames, top_k=250))
    uncached_s = _seconds(lambda: lm.generate(cues, frames, top_k=250, use_cache=False))
    tokens = batch * lm.cfg.n_q * frames
    return _row(f"{name} ({lm.num_parameters() / 1e6:.1f}M): {batch} notes x {frames + lm.cfg.n_q - 1} steps",
                "no cache (whole prefix every step)", "KV cache + cached cross-attention", uncached_s, cached_s,
                f"{tokens / cached_s:.0f} tokens/s with cache, {tokens / uncached_s:.0f} without")


def cfg_row(name: str, batch: int, frames: int) -> dict:
    lm, cues = _model(name), _cues(batch)
    lm.generate(cues, 4)
    two_s = _seconds(lambda: lm.generate(cues, frames, top_k=250, cfg_batched=False))
    batched_s = _seconds(lambda: lm.generate(cues, frames, top_k=250))
    tokens = batch * lm.cfg.n_q * frames
    return _row(f"{name}: CFG for {batch} notes x {frames + lm.cfg.n_q - 1} steps (KV cache)",
                "two forwards (conditional, null)", "one forward of the doubled batch", two_s, batched_s,
                f"{tokens / batched_s:.0f} tokens/s")


def run(quick: bool) -> list[dict]:
    paper_frames = 117 if quick else PAPER_FRAMES
    return [
        cache_row("tiny", 8, PAPER_FRAMES),
        cache_row("paper", 1 if quick else 2, paper_frames),
        cfg_row("tiny", 8, PAPER_FRAMES),
        cfg_row("paper", 8, paper_frames),
    ]
