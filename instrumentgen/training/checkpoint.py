"""A training checkpoint: what every worker writes into a checkpoint folder, and reads back.

    deepspeed/ or ddp_state.pt   weights and buffers, optimizer, schedule (every rank its ZeRO partition)
    rng_rank<r>.pt               each rank's torch / numpy / python random state
    trainer_state.json           step, epoch, micro-batches done in the epoch, config hash
    metrics.csv                  the metric history up to this step (`read_metrics`)
    model.pt                     consolidated fp32 InstrumentLM (`InstrumentLM.load`)

The folder is a local directory; uploading it (and finding the one to resume from) is the
Ray Train adapter's job (`worker.py`). Once every rank has uploaded, rank 0 commits it as the
run's latest (`run_storage.commit_latest`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch

from instrumentgen import storage
from instrumentgen.config import Config, config_hash
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.training.engines import Engine
from instrumentgen.training.run_storage import commit_latest

STATE = "trainer_state.json"
METRICS = "metrics.csv"
MODEL = "model.pt"


@dataclass
class Position:
    """Where training stands: optimizer steps done, and micro-batches done in the current epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def rng_state() -> dict:
    """This process's torch / numpy / python random state."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def metrics_csv(history: list[dict]) -> bytes:
    """Metric rows -> CSV bytes; the columns are the union of the rows' keys (a missing value: empty)."""
    columns = list(dict.fromkeys(key for row in history for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    writer.writerows(history)
    return text.getvalue().encode()


def read_metrics(url: str) -> list[dict]:
    """A `metrics.csv` (a run's or a checkpoint's) -> its rows: floats, step and epoch as ints, empty cells left out."""
    rows = csv.DictReader(storage.read_bytes(url).decode().splitlines())
    return [
        {k: int(float(v)) if k in ("step", "epoch") else float(v) for k, v in row.items() if v != ""} for row in rows
    ]


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint at optimizer step `step` (sorts by step)."""
    return f"checkpoint_{step:09d}"


class Checkpointer:
    """Writes and reads this worker's part of a checkpoint folder (see the module docstring)."""

    def __init__(self, cfg: Config, rank: int):
        self.cfg, self.rank = cfg, rank
        self.run_url = storage.join(cfg.train.storage_path, cfg.train.run_name)

    def write(self, engine: Engine, position: Position, history: list[dict], folder: str) -> None:
        """Every rank calls it (the consolidation is a collective under ZeRO-3)."""
        state_dict = engine.consolidated_state_dict()
        engine.save(folder)
        torch.save(rng_state(), os.path.join(folder, f"rng_rank{self.rank}.pt"))
        if self.rank != 0:
            return
        with open(os.path.join(folder, STATE), "w") as f:
            json.dump({**asdict(position), "config_hash": config_hash(self.cfg)}, f)
        with open(os.path.join(folder, METRICS), "wb") as f:
            f.write(metrics_csv(history))
        with torch.random.fork_rng(devices=[]):  # building the export must not move the training RNG
            export = InstrumentLM(self.cfg.model)
        export.load_state_dict(state_dict)
        export.save(os.path.join(folder, MODEL))

    def commit(self, position: Position) -> None:
        """Rank 0, once every rank has uploaded its part: the run's latest checkpoint is this one."""
        if self.rank == 0:
            commit_latest(self.run_url, position.step, checkpoint_name(position.step))

    def read(self, engine: Engine, folder: str) -> tuple[Position, list[dict]]:
        """Restore the engine and this rank's random state from `folder` -> (position, metric history)."""
        engine.load(folder)
        with open(os.path.join(folder, STATE)) as f:
            state = json.load(f)
        rng = os.path.join(folder, f"rng_rank{self.rank}.pt")
        if os.path.exists(rng):  # absent when the run resumes on more workers than it had
            set_rng_state(torch.load(rng, weights_only=False))
        history = read_metrics(os.path.join(folder, METRICS))
        return Position(state["step"], state["epoch"], state["batch_in_epoch"]), history
