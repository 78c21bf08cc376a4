"""Generation speed: KV cache vs recomputing the prefix, batched CFG vs two forwards, tokens/s.

All rows generate at the paper's 348 decoding steps (345 frames = 4 s at 44.1 kHz, hop 512, plus
the 3 steps of the delay pattern) with CFG (coef 3) and top-k 250 sampling, random-init weights
(speed does not depend on their values). The no-cache baseline costs O(T^2) per note, so the
paper-config row uses a small batch; `--quick` also shortens the paper row to 120 steps.
"""

from __future__ import annotations

import torch

from instrumentgen.config import load_config
from instrumentgen.model.cues import make_cues
from instrumentgen.model.lm import InstrumentLM
from jobs.benchmarks import row, timed

PAPER_FRAMES = 345  # ceil(4 s * 44100 / 512): 348 steps with K = 4


def seconds(fn) -> float:
    """Wall-clock seconds of `fn()`."""
    return timed(fn)[0]


def _model(name: str) -> InstrumentLM:
    torch.manual_seed(0)
    return InstrumentLM(load_config(name, ["model.max_frames=512"]).model).eval()


def _cues(batch: int):
    pitches = [21 + (i * 7) % 88 for i in range(batch)]
    return make_cues(pitches, [100] * batch, clap_embedding=torch.randn(512))


KV_CACHE_GOAL, BATCHED_CFG_GOAL = 20.0, 1.6  # the speed-ups each technique is expected to give


def cacherow(name: str, batch: int, frames: int) -> dict:
    """KV cache against recomputing the whole prefix every step, `batch` notes of `frames` frames."""
    lm, cues = _model(name), _cues(batch)
    lm.generate(cues, 4)  # warm-up: allocator, kernels
    cached_s = seconds(lambda: lm.generate(cues, frames, top_k=250))
    uncached_s = seconds(lambda: lm.generate(cues, frames, top_k=250, use_cache=False))
    tokens = batch * lm.cfg.n_q * frames
    return row(
        f"{name} ({lm.num_parameters() / 1e6:.1f}M): {batch} notes x {frames + lm.cfg.n_q - 1} steps",
        "no cache (whole prefix every step)",
        "KV cache + cached cross-attention",
        uncached_s,
        cached_s,
        KV_CACHE_GOAL,
        f"{tokens / cached_s:.0f} tokens/s with cache, {tokens / uncached_s:.0f} without",
    )


def cfgrow(name: str, batch: int, frames: int) -> dict:
    """CFG as one forward of the doubled batch against two forwards (conditional, null)."""
    lm, cues = _model(name), _cues(batch)
    lm.generate(cues, 4)
    two_s = seconds(lambda: lm.generate(cues, frames, top_k=250, cfg_batched=False))
    batched_s = seconds(lambda: lm.generate(cues, frames, top_k=250))
    tokens = batch * lm.cfg.n_q * frames
    return row(
        f"{name}: CFG for {batch} notes x {frames + lm.cfg.n_q - 1} steps (KV cache)",
        "two forwards (conditional, null)",
        "one forward of the doubled batch",
        two_s,
        batched_s,
        BATCHED_CFG_GOAL,
        f"{tokens / batched_s:.0f} tokens/s",
    )


def throughput_rows(name: str, batches: list[int], frames: int) -> list[dict]:
    """Cached generation tokens/s at each batch size, as a ratio to batch 1 (the curve in the docs)."""
    lm = _model(name)
    lm.generate(_cues(1), 4)
    seconds = {batch: seconds(lambda: lm.generate(_cues(batch), frames, top_k=250)) for batch in [1, *batches]}
    per_token = {batch: s / (batch * lm.cfg.n_q * frames) for batch, s in seconds.items()}
    return [
        row(
            f"{name}: tokens/s at batch {batch} ({frames + lm.cfg.n_q - 1} steps, CFG)",
            "batch 1",
            f"batch {batch}",
            per_token[1],
            per_token[batch],
            None,
            f"{1 / per_token[batch]:.0f} tokens/s (batch 1: {1 / per_token[1]:.0f}); _s columns are seconds per token",
        )
        for batch in batches
    ]


def plot(rows: list[dict], out_dir: str) -> None:
    """`generation_throughput.png`: tokens/s against batch size, one line per config."""
    import os
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, dict[int, float]] = {}
    for measured in rows:
        found = re.match(r"(\w+): tokens/s at batch (\d+)", measured["benchmark"])
        if found:
            curve = curves.setdefault(found[1], {1: 1 / measured["baseline_s"]})
            curve[int(found[2])] = 1 / measured["ours_s"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, curve in curves.items():
        batches = sorted(curve)
        ax.plot(batches, [curve[b] for b in batches], marker="o", label=name)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="notes per batch",
        ylabel="tokens / s (KV cache, CFG)",
        title="Generation throughput on this machine",
    )
    ax.legend()
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(os.path.join(out_dir, "generation_throughput.png"), dpi=120)


def run(quick: bool) -> list[dict]:
    """Full: the tiny row at its configured generation batch (110 notes), the paper row at 4 notes
    (its no-cache baseline alone takes minutes on a CPU); `--quick` shrinks both."""
    paper_frames = 117 if quick else PAPER_FRAMES
    return [
        cacherow("tiny", 16 if quick else load_config("tiny").generate.batch_size, PAPER_FRAMES),
        cacherow("paper", 1 if quick else 4, paper_frames),
        cfgrow("tiny", 8, PAPER_FRAMES),
        cfgrow("paper", 1, paper_frames),
        cfgrow("paper", 8, paper_frames),
        *throughput_rows("tiny", [4, 16, 64] if quick else [4, 16, 64, 110], PAPER_FRAMES),
        *throughput_rows("paper", [4, 16] if quick else [4, 16, 64], paper_frames),
    ]
