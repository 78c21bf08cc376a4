"""The loop every training worker runs (`train_loop` is TorchTrainer's `train_loop_per_worker`).

Per optimizer step: `grad_accum` micro-batches of `batch_size / (workers * grad_accum)` rows of
this worker's shard of the token shards (`ray.train.get_dataset_shard`), the LM loss (mean
cross-entropy of the K codebooks + the CLAP quantizer's loss) with the paper's per-sample
attribute dropout done inside the model, the engine's step (DeepSpeed or DDP, `engines.py`).

Every `log_every` steps the window's mean metrics are reported to Ray Train and rank 0 rewrites
`<run>/metrics.csv`; every `eval_every` steps the validation loss over the held-out shard is
added; every `checkpoint_every` steps (and at `max_steps`) a checkpoint is reported:

    deepspeed/ or ddp_state.pt   weights, optimizer, schedule (every rank its ZeRO partition)
    rng_rank<r>.pt               each rank's torch / numpy / python random state
    trainer_state.json           step, epoch, micro-batches done in the epoch, config hash
    metrics.csv                  the metric history up to this step
    model.pt                     consolidated fp32 InstrumentLM (`InstrumentLM.load`)

A restarted worker group (a failure, or the same run submitted again) loads the latest
checkpoint and continues at the same step, data position and random state.
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from instrumentgen import storage
from instrumentgen.config import Config, ConfigError, config_hash
from instrumentgen.cues import Cues
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.shards import collate
from instrumentgen.training.engines import make_engine
from instrumentgen.training.run_storage import commit_latest, committed_checkpoint

STATE = "trainer_state.json"
METRICS = "metrics.csv"
MODEL = "model.pt"


@dataclass
class Position:
    """Where training stands: optimizer steps done, and micro-batches done in the current epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def micro_batch_rows(batch_size: int, world_size: int, grad_accum: int) -> int:
    """Rows per worker and micro-step that make the global batch `batch_size`."""
    rows, rest = divmod(batch_size, world_size * grad_accum)
    if rows == 0 or rest:
        raise ConfigError(f"train.batch_size={batch_size} does not split into {world_size} workers x "
                          f"{grad_accum} accumulation steps; allowed: a multiple of {world_size * grad_accum}")
    return rows


def micro_batches(shard, rows: int, shuffle_buffer: int, seed: int, position: Position) -> Iterator[tuple]:
    """Endless (codes [B, K, N], cues) micro-batches from `position` on; updates `position` as it goes.

    Each epoch is shuffled by a local buffer seeded with (seed, epoch), so a resumed run sees the
    same batches as an uninterrupted one; the micro-batches already done in the epoch are skipped.
    """
    while True:
        batches = shard.iter_batches(batch_size=rows, batch_format="numpy", drop_last=True,
                                     local_shuffle_buffer_size=shuffle_buffer or None,
                                     local_shuffle_seed=seed * 100_003 + position.epoch if shuffle_buffer else None)
        count = 0
        for index, batch in enumerate(batches):
            count += 1
            if index < position.batch_in_epoch:
                continue
            position.batch_in_epoch = index + 1
            yield collate(batch)
        if count == 0:
            raise ConfigError(f"a worker's shard has fewer than {rows} rows (train.batch_size / workers); "
                              "allowed: more notes in data.shards or a smaller train.batch_size")
        position.epoch += 1
        position.batch_in_epoch = 0


def _to_engine(codes: torch.Tensor, cues: Cues, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, Cues]:
    cues = cues.to(device)
    if cues.clap_embedding is not None:
        cues = cues.with_clap(cues.clap_embedding.to(dtype))
    return codes.to(device), cues


@torch.no_grad()
def validation_loss(engine, shard, rows: int) -> dict[str, float]:
    """Mean loss and per-codebook CE over every row of every worker's validation shard."""
    engine.module.eval()
    totals = torch.zeros(2 + engine.module.cfg.n_q, dtype=torch.float64)  # rows, loss sum, ce sums
    for batch in shard.iter_batches(batch_size=rows, batch_format="numpy"):
        codes, cues = _to_engine(*collate(batch), engine.device, engine.dtype)
        out = engine.forward(codes, cues)
        n = len(codes)
        totals += torch.cat([torch.tensor([n, out.loss.item() * n], dtype=torch.float64),
                             out.ce_per_codebook.detach().double().cpu() * n])
    engine.module.train()
    if dist.is_initialized():
        dist.all_reduce(totals)
    n = max(totals[0].item(), 1.0)
    return {"valid_loss": totals[1].item() / n, **{f"valid_ce_{k}": v.item() / n for k, v in enumerate(totals[2:])}}


def window_means(window: dict[str, list[float]]) -> dict[str, float]:
    """Mean of each metric over the window's steps and over every rank (NaN entries skipped)."""
    names = sorted(window)
    values = torch.tensor([[np.nansum(window[n]), np.isfinite(window[n]).sum()] for n in names], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(values)
    return {n: (total / count if count else float("nan")) for n, (total, count) in zip(names, values.tolist())}


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _csv(history: list[dict]) -> bytes:
    columns = list(dict.fromkeys(key for row in history for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    writer.writerows(history)
    return text.getvalue().encode()


def read_metrics(url: str) -> list[dict]:
    """A `metrics.csv` (a run's or a checkpoint's) -> its rows: floats, step and epoch as ints, empty cells left out."""
    rows = csv.DictReader(storage.read_bytes(url).decode().splitlines())
    return [{k: int(float(v)) if k in ("step", "epoch") else float(v) for k, v in row.items() if v != ""} for row in rows]


class Checkpointer:
    """Writes and reads this worker's part of a checkpoint (see the module docstring)."""

    def __init__(self, cfg: Config, rank: int):
        self.cfg, self.rank = cfg, rank
        self.run_url = storage.join(cfg.train.storage_path, cfg.train.run_name)

    def save(self, engine, position: Position, history: list[dict], metrics: dict) -> None:
        state_dict = engine.consolidated_state_dict()  # a collective under ZeRO-3: every rank
        with tempfile.TemporaryDirectory() as folder:
            engine.save(folder)
            torch.save(_rng_state(), os.path.join(folder, f"rng_rank{self.rank}.pt"))
            if self.rank == 0:
                with open(os.path.join(folder, STATE), "w") as f:
                    json.dump({**asdict(position), "config_hash": config_hash(self.cfg)}, f)
                with open(os.path.join(folder, METRICS), "wb") as f:
                    f.write(_csv(history))
                with torch.random.fork_rng(devices=[]):  # building the export must not move the training RNG
                    export = InstrumentLM(self.cfg.model)
                export.load_state_dict(state_dict)
                export.save(os.path.join(folder, MODEL))
            name = f"checkpoint_{position.step:09d}"
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder), checkpoint_dir_name=name)
        if dist.is_initialized():
            dist.barrier()  # every rank has uploaded its part
        if self.rank == 0:
            commit_latest(self.run_url, position.step, name)

    def load(self, engine) -> tuple[Position, list[dict]] | None:
        checkpoint = ray.train.get_checkpoint() or committed_checkpoint(self.run_url)
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            engine.load(folder)
            with open(os.path.join(folder, STATE)) as f:
                state = json.load(f)
            rng = os.path.join(folder, f"rng_rank{self.rank}.pt")
            if os.path.exists(rng):  # absent when the run resumes on more workers than it had
                _set_rng_state(torch.load(rng, weights_only=False))
            history = read_metrics(os.path.join(folder, METRICS))
        return Position(state["step"], state["epoch"], state["batch_in_epoch"]), history


def _kill_if_asked(kill_at: dict | None, rank: int, step: int) -> None:
    """Test hook: SIGKILL this worker process once, after step `kill_at['step']` on rank `kill_at['rank']`."""
    if kill_at and kill_at["rank"] == rank and kill_at["step"] == step and not storage.exists(kill_at["marker"]):
        storage.write_bytes(kill_at["marker"], b"killed")
        os.kill(os.getpid(), signal.SIGKILL)


def train_loop(loop_config: dict) -> None:
    """TorchTrainer's per-worker function; `loop_config` = {"cfg": Config, "kill_at": test hook or None}."""
    cfg: Config = loop_config["cfg"]
    train_cfg = cfg.train
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    rows = micro_batch_rows(train_cfg.batch_size, world_size, train_cfg.grad_accum)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    engine = make_engine(InstrumentLM(cfg.model), train_cfg, rows)
    torch.manual_seed(cfg.seed * 1_000 + rank + 1)  # then each rank its own dropout draws
    np.random.seed(cfg.seed * 1_000 + rank + 1)
    random.seed(cfg.seed * 1_000 + rank + 1)
    checkpointer = Checkpointer(cfg, rank)
    position, history = checkpointer.load(engine) or (Position(), [])
    if rank == 0 and position.step:
        sys.stdout.write(f"resumed at step {position.step} (epoch {position.epoch}, micro-batch {position.batch_in_epoch})\n")
    engine.module.train()

    valid_shard = ray.train.get_dataset_shard("valid") if "valid" in loop_config.get("datasets", ()) else None
    batches = micro_batches(ray.train.get_dataset_shard("train"), rows, train_cfg.shuffle_buffer, cfg.seed, position)
    window: dict[str, list[float]] = defaultdict(list)
    window_start, tokens = time.perf_counter(), 0
    metrics_url = storage.join(checkpointer.run_url, METRICS)
    while position.step < train_cfg.max_steps:
        for _ in range(train_cfg.grad_accum):
            codes, cues = _to_engine(*next(batches), engine.device, engine.dtype)
            out = engine.forward(codes, cues)
            engine.backward(out.loss)
            grad_norm = engine.step()
            tokens += codes.numel() * world_size
            window["loss"].append(out.loss.item())
            window["rvq_loss"].append(out.rvq_loss.item())
            for k, ce in enumerate(out.ce_per_codebook.tolist()):
                window[f"ce_{k}"].append(ce)
        position.step += 1
        window["grad_norm"].append(grad_norm if grad_norm is not None else float("nan"))
        _kill_if_asked(loop_config.get("kill_at"), rank, position.step)

        last = position.step == train_cfg.max_steps
        checkpoint_now = position.step % train_cfg.checkpoint_every == 0 or last
        if not (checkpoint_now or position.step % train_cfg.log_every == 0):
            continue
        elapsed = time.perf_counter() - window_start
        metrics = {"step": position.step, "epoch": position.epoch, "lr": engine.lr,
                   "tokens_per_s": tokens / elapsed, "steps_per_s": len(window["grad_norm"]) / elapsed,
                   **window_means(window)}
        if valid_shard is not None and (position.step % train_cfg.eval_every == 0 or last):
            metrics.update(validation_loss(engine, valid_shard, rows))
        history.append(metrics)
        if rank == 0:
            storage.write_bytes(metrics_url, _csv(history))
            # stdout itself: Ray Train's patched print would log each line twice.
            sys.stdout.write(f"step {position.step}/{train_cfg.max_steps} epoch {position.epoch} loss {metrics['loss']:.4f}"
                             + (f" valid {metrics['valid_loss']:.4f}" if "valid_loss" in metrics else "")
                             + f" lr {metrics['lr']:.2e} {metrics['tokens_per_s']:.0f} tok/s\n")
            sys.stdout.flush()
        if checkpoint_now:
            checkpointer.save(engine, position, history, metrics)
        else:
            ray.train.report(metrics)
        window.clear()
        window_start, tokens = time.perf_counter(), 0
