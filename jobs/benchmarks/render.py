"""Batch rendering throughput: the Ray Data job (2 render actors) vs a serial loop over the same prompts.

Both render the same 8 prompts with the tiny config and an untrained tiny checkpoint into a fresh
library, doing the same work per instrument (`instrumentgen.render.Renderer.render`: generate_instrument,
score, write): the loop in this process, one instrument after the other with torch's default
threads; the job through `jobs.render.run` (actors of one CPU and one torch thread each). Both
times include loading the models (the job also starts its actors).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import torch

from instrumentgen import storage
from instrumentgen.config import load_config
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
    from instrumentgen.prompts import read_prompts
    from instrumentgen.render import Renderer

    renderer = Renderer(cfg, checkpoint)
    requests, _ = read_prompts(prompts)
    for number, request in enumerate(requests):
        renderer.render(request, f"serial-{number}", storage.join(out, f"serial-{number}"))
    return len(requests)


def run(quick: bool) -> list[dict]:
    """One row: 8 instruments end to end, serial loop vs the job."""
    from instrumentgen.model.lm import InstrumentLM
    from jobs import render as job

    keys, velocities = ([60, 63], [100]) if quick else ([48, 71], [50, 100])
    notes = (keys[1] - keys[0] + 1) * len(velocities)
    cfg = load_config("tiny", [f"render.actors={ACTORS}", "render.num_cpus=1"])
    with local_ray(), tempfile.TemporaryDirectory() as root:
        torch.manual_seed(0)
        checkpoint = InstrumentLM(cfg.model).save(os.path.join(root, "model.pt"))
        prompts = os.path.join(root, "prompts.jsonl")
        storage.write_bytes(
            prompts,
            "".join(json.dumps({"prompt": p, "keys": keys, "velocities": velocities}) + "\n" for p in PROMPTS).encode(),
        )
        start = time.perf_counter()
        count = _serial_loop(cfg, checkpoint, prompts, os.path.join(root, "serial"))
        baseline_s = time.perf_counter() - start
        start = time.perf_counter()
        stats = job.run(cfg, checkpoint, prompts, os.path.join(root, "library"))
        ours_s = time.perf_counter() - start
    assert count == stats["rendered"] == len(PROMPTS)
    return [
        {
            "benchmark": f"render {count} instruments of {notes} notes (tiny, 0.5 s notes), end to end",
            "baseline": "serial loop of Renderer.render (generate_instrument + scores + write)",
            "ours": f"jobs.render (Ray Data, {ACTORS} actors of 1 CPU)",
            "baseline_s": baseline_s,
            "ours_s": ours_s,
            "ratio": baseline_s / ours_s,
            "goal": 1.5,
            "note": f"{3600 * count / ours_s:.0f} vs {3600 * count / baseline_s:.0f} instruments/hour; model loading "
            f"and actor start-up included; {os.cpu_count()} cores",
        }
    ]
