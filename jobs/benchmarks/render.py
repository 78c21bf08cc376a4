"""Batch rendering throughput: the Ray Data job (2 render actors) vs a serial loop over the same prompts.

Both render the same prompts (8, then 16 for the steady state) with the tiny config and an
untrained tiny checkpoint into a fresh library, doing the same work per instrument
(`instrumentgen.instruments.render.Renderer.render`: generate_instrument, score, write): the loop in this
process, one instrument after the other with torch's default threads; the job through
`jobs.render.run` (actors of one CPU and one torch thread each). Both times include loading the
models (the job also starts its actors); the steady-state row is the marginal cost of the second 8.
A Renderer is built once before any timing, so neither run of the loop pays Python's one-time
imports (about 3 s: laion_clap, transformers, dac), which would otherwise fall on the first run
only; the job's fresh actors pay theirs in both runs, so the end-to-end row is the stricter for it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import torch

from instrumentgen import storage
from instrumentgen.config import load_config
from instrumentgen.instruments.prompts import read_prompts
from instrumentgen.instruments.render import Renderer
from instrumentgen.model.lm import InstrumentLM
from jobs import render as job
from jobs.benchmarks import row
from jobs.entry import local_ray

PROMPTS = (
    "warm analog brass",
    "glassy bell",
    "dark plucked bass",
    "soft felt piano",
    "airy flute",
    "gritty saw lead",
    "shimmering strings",
    "metallic mallet",
)
ACTORS = 2  # one per core of the 2-core reference machine


def _serial_loop(cfg, checkpoint: str, prompts: str, out: str) -> int:
    """The obvious script: load once, then one instrument after the other."""
    renderer = Renderer(cfg, checkpoint)
    requests, _ = read_prompts(prompts)
    for number, request in enumerate(requests):
        renderer.render(request, f"serial-{number}", storage.join(out, f"serial-{number}"))
    return len(requests)


def _time_both(root: str, cfg, checkpoint: str, count: int, keys: list[int], velocities: list[int]) -> tuple:
    """The first `count` of the 8 prompts and their second takes -> (count, loop s, job s), each into a new library."""
    texts = [*PROMPTS, *(f"{p}, take 2" for p in PROMPTS)]
    prompts = os.path.join(root, f"prompts-{count}.jsonl")
    lines = [json.dumps({"prompt": text, "keys": keys, "velocities": velocities}) for text in texts[:count]]
    storage.write_bytes(prompts, "".join(line + "\n" for line in lines).encode())
    start = time.perf_counter()
    rendered = _serial_loop(cfg, checkpoint, prompts, os.path.join(root, f"serial-{count}"))
    baseline_s = time.perf_counter() - start
    start = time.perf_counter()
    stats = job.run(cfg, checkpoint, prompts, os.path.join(root, f"library-{count}"))
    ours_s = time.perf_counter() - start
    assert rendered == stats["rendered"] == count
    return count, baseline_s, ours_s


def run(quick: bool) -> list[dict]:
    """Two sizes, n and 2n instruments: the end-to-end ratio at n (actor start-up and model loading
    included), and the steady-state ratio from the marginal cost of the second n instruments."""
    keys, velocities = ([60, 63], [100]) if quick else ([48, 71], [50, 100])
    notes = (keys[1] - keys[0] + 1) * len(velocities)
    cfg = load_config("tiny", [f"render.actors={ACTORS}", "render.num_cpus=1"])
    with local_ray(), tempfile.TemporaryDirectory() as root:
        torch.manual_seed(0)
        checkpoint = InstrumentLM(cfg.model).save(os.path.join(root, "model.pt"))
        Renderer(cfg, checkpoint)  # the one-time imports, untimed (see the module docstring)
        small = _time_both(root, cfg, checkpoint, len(PROMPTS), keys, velocities)
        large = _time_both(root, cfg, checkpoint, 2 * len(PROMPTS), keys, velocities)
    count, baseline_s, ours_s = small
    extra, marginal_baseline_s, marginal_ours_s = large[0] - small[0], large[1] - small[1], large[2] - small[2]
    ours = f"jobs.render (Ray Data, {ACTORS} actors of 1 CPU)"
    baseline = "serial loop of Renderer.render (generate_instrument + scores + write)"
    return [
        row(
            f"render {count} instruments of {notes} notes (tiny, 0.5 s notes), end to end",
            baseline,
            ours,
            baseline_s,
            ours_s,
            1.5,
            f"{3600 * count / ours_s:.0f} vs {3600 * count / baseline_s:.0f} instruments/hour; model loading "
            f"and actor start-up included; {os.cpu_count()} cores",
        ),
        row(
            f"render, steady state: the extra {extra} instruments of the {large[0]}-prompt run "
            f"over the {count}-prompt run",
            baseline,
            ours,
            marginal_baseline_s,
            marginal_ours_s,
            1.5,
            f"{3600 * extra / marginal_ours_s:.0f} vs {3600 * extra / marginal_baseline_s:.0f} "
            "instruments/hour once loaded",
        ),
    ]
