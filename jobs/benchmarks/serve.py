"""Serving: one instrument on 1 vs 2 Generator replicas, and instruments per minute at saturation.

Everything goes through the real application on 127.0.0.1 (`serve.local.serving`), tiny config,
an untrained tiny checkpoint (speed does not depend on the weights), each Generator replica with
half a CPU and one torch thread. Seconds are from POST to `done` as a client sees them (the
replicas are started and warmed up by one small instrument first).
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import tempfile
import time

import requests
import torch

from instrumentgen.config import load_config
from instrumentgen.model.lm import InstrumentLM
from jobs.benchmarks import row
from jobs.entry import local_ray
from serve.local import replica_pid, serving, wait_done

LEASE_S = 5  # the ingress lease: a killed ingress's instrument is adopted within about this
WARM_UP = {"prompt": "warm up", "seed": 0, "keys": {"low": 60, "high": 61}, "velocities": [100]}


def _instrument_s(base: str, body: dict) -> float:
    start = time.perf_counter()
    accepted = requests.post(f"{base}/v1/instruments", json=body, timeout=60).json()
    status = wait_done(base, accepted["id"], timeout_s=1800, poll_s=0.2)
    if status["status"] != "done":
        raise RuntimeError(f"benchmark instrument failed: {status['error']}")
    return time.perf_counter() - start


def _many_s(base: str, bodies: list[dict]) -> float:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        list(pool.map(lambda body: _instrument_s(base, body), bodies))
    return time.perf_counter() - start


def _killed_ingress_s(base: str, body: dict, after_notes: int) -> float:
    """Seconds from POST to done of `body` when the Ingress replica's process is SIGKILLed once
    `after_notes` notes are done (the restarted replica adopts it when the lease ends)."""
    start = time.perf_counter()
    accepted = requests.post(f"{base}/v1/instruments", json=body, timeout=60).json()
    while requests.get(f"{base}{accepted['status_url']}", timeout=30).json()["notes_done"] < after_notes:
        time.sleep(0.05)
    os.kill(replica_pid("Ingress"), signal.SIGKILL)
    while True:
        try:
            status = requests.get(f"{base}{accepted['status_url']}", timeout=30).json()
        except (requests.RequestException, ValueError):  # no ingress for a moment
            status = {"status": "restarting"}
        if status["status"] in ("done", "failed"):
            break
        time.sleep(0.2)
    if status["status"] != "done":
        raise RuntimeError(f"benchmark instrument failed: {status['error']}")
    return time.perf_counter() - start


def _config(root: str, replicas: int, in_flight: int):
    return load_config(
        "tiny",
        [
            f"serve.checkpoint={root}/model.pt",
            f"serve.storage={root}/instruments-{replicas}",
            f"serve.min_replicas={replicas}",
            f"serve.max_replicas={replicas}",
            f"serve.max_instruments_in_flight={in_flight}",
            "serve.num_cpus=0.5",
            f"serve.stale_after_s={LEASE_S}",
        ],
    )


def run(quick: bool) -> list[dict]:
    """Full: a 440-note instrument, then 4 instruments of 88 notes at once against one after another;
    `--quick`: 120 notes, then 3 of 40."""
    keys = {"low": 21, "high": 44} if quick else {"low": 21, "high": 108}
    small = {"low": 60, "high": 67} if quick else {"low": 48, "high": 65}
    count = 3 if quick else 4
    one = {"prompt": "warm analog brass", "seed": 1, "keys": keys}
    batch = [{"prompt": f"saturation {i}", "seed": 10 + i, "keys": small} for i in range(count)]
    with tempfile.TemporaryDirectory() as root, local_ray(num_cpus=2):
        torch.manual_seed(0)
        InstrumentLM(load_config("tiny").model).save(f"{root}/model.pt")
        seconds = {}
        for replicas in (1, 2):
            with serving(_config(root, replicas, count)) as base:
                _instrument_s(base, WARM_UP)
                seconds[replicas] = _instrument_s(base, {**one, "seed": replicas})
                if replicas == 2:
                    serial_s = sum(_instrument_s(base, {**body, "seed": 100 + i}) for i, body in enumerate(batch))
                    parallel_s = _many_s(base, batch)
                    notes_total = (keys["high"] - keys["low"] + 1) * 5
                    killed_s = _killed_ingress_s(base, {**one, "seed": 3}, notes_total // 4)
    notes = (keys["high"] - keys["low"] + 1) * 5
    per_minute = count * 60 / parallel_s
    return [
        row(
            f"one instrument, {notes} notes, shards of 55 slots",
            "1 Generator replica",
            "2 Generator replicas",
            seconds[1],
            seconds[2],
            1.6,
            "each replica 0.5 CPU, 1 torch thread",
        ),
        row(
            f"{count} instruments of {(small['high'] - small['low'] + 1) * 5} notes, 2 replicas",
            "one after another",
            f"{count} in flight at once",
            serial_s,
            parallel_s,
            None,
            f"{per_minute:.1f} instruments/min at saturation ({count * 60 / serial_s:.1f} one at a time)",
        ),
        row(
            f"one instrument, {notes} notes, 2 replicas, Ingress SIGKILLed at {notes // 4} notes",
            "undisturbed",
            "Ingress killed, adopted",
            seconds[2],
            killed_s,
            None,
            f"lease serve.stale_after_s={LEASE_S}; every note kept, each shard rendered once",
        ),
    ]
