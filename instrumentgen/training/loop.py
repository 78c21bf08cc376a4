"""The loop every training worker runs: batching, validation, metric windows, checkpoints.

Per optimizer step: `grad_accum` micro-batches of `batch_size / (workers * grad_accum)` rows of
this worker's shard of the token shards, the LM loss (mean cross-entropy of the K codebooks)
with the paper's per-sample attribute dropout done inside the model, the engine's step
(DeepSpeed or DDP, `engines.py`).

Before the first step of a fresh run the CLAP quantizer's codebooks are the k-means of a sample
of the training set's embeddings (`clap_sample.py`). `train` then reads step -> log ->
checkpoint (`train_step`, `window_metrics` + `log_metrics`, `save_checkpoint`).

Every `log_every` steps the window's mean metrics (and the CLAP quantizer's code usage) are
reported and rank 0 rewrites `<run>/metrics.csv`; every `eval_every` steps the validation loss
over the held-out shard is added; every `checkpoint_every` steps (and at `max_steps`) a
checkpoint (`checkpoint.py`) is reported. A restarted worker group (a failure, or the same run
submitted again) loads the latest checkpoint and continues at the same step, data position and
random state.

`train` is plain PyTorch: it gets its rank, device, data shards (anything with Ray Data's
`iter_batches`) and a `Session` to report to; `jobs/train_worker.py` is the Ray Train adapter.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np
import torch
import torch.distributed as dist

from instrumentgen import storage
from instrumentgen.config import Config, ConfigError
from instrumentgen.data.shards import collate
from instrumentgen.faults import Fault, fault_point
from instrumentgen.model.cues import NOT_GIVEN, Cues
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.model.quantizer import code_counts, code_usage_from_counts
from instrumentgen.training.checkpoint import METRICS, Checkpointer, Position, checkpoint_name, metrics_csv
from instrumentgen.training.clap_sample import clap_sample
from instrumentgen.training.engines import Engine, make_engine


class Shard(Protocol):
    """A worker's part of a data set (a Ray Data `DataIterator` is one)."""

    def iter_batches(
        self,
        *,
        batch_size: int,
        batch_format: str,
        drop_last: bool = False,
        local_shuffle_buffer_size: int | None = None,
        local_shuffle_seed: int | None = None,
    ) -> Iterator[dict[str, np.ndarray]]: ...


class Session(Protocol):
    """Where the loop reports to and resumes from (Ray Train: `worker.RayTrainSession`)."""

    def report(self, metrics: dict, checkpoint_folder: str | None = None, checkpoint_name: str | None = None) -> None:
        """Record `metrics`; with a folder, upload it as this rank's part of checkpoint `checkpoint_name`."""

    def restored_checkpoint(self) -> AbstractContextManager[str | None]:
        """The local folder of the checkpoint to resume from, or None for a fresh run."""


def micro_batch_rows(batch_size: int, world_size: int, grad_accum: int) -> int:
    """Rows per worker and micro-step that make the global batch `batch_size`."""
    rows, rest = divmod(batch_size, world_size * grad_accum)
    if rows == 0 or rest:
        raise ConfigError(
            f"train.batch_size={batch_size} does not split into {world_size} workers x "
            f"{grad_accum} accumulation steps; allowed: a multiple of {world_size * grad_accum}"
        )
    return rows


def micro_batches(shard, rows: int, shuffle_buffer: int, seed: int, position: Position) -> Iterator[tuple]:
    """Endless (codes [B, K, N], cues) micro-batches from `position` on; updates `position` as it goes.

    Each epoch is shuffled by a local buffer seeded with (seed, epoch), so a resumed run sees the
    same batches as an uninterrupted one; the micro-batches already done in the epoch are skipped.
    """
    while True:
        batches = shard.iter_batches(
            batch_size=rows,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=shuffle_buffer or None,
            local_shuffle_seed=seed * 100_003 + position.epoch if shuffle_buffer else None,
        )
        count = 0
        for index, batch in enumerate(batches):
            count += 1
            if index < position.batch_in_epoch:
                continue
            position.batch_in_epoch = index + 1
            yield collate(batch)
        if count == 0:
            raise ConfigError(
                f"a worker's shard has fewer than {rows} rows (train.batch_size / workers); "
                "allowed: more notes in data.shards or a smaller train.batch_size"
            )
        position.epoch += 1
        position.batch_in_epoch = 0


def _to_engine(codes: torch.Tensor, cues: Cues, device: torch.device) -> tuple[torch.Tensor, Cues]:
    """The batch on the engine's device. The CLAP embedding stays fp32 (the shards' fp16 widened):
    the quantizer works in fp32, and its projection casts the quantized value to the model's dtype."""
    return codes.to(device), cues.to(device)


def without_metadata(cues: Cues) -> Cues:
    """The cues with family and source not given: how the CLAP model is used (a prompt gives neither)."""
    return Cues(
        torch.full_like(cues.family, NOT_GIVEN),
        torch.full_like(cues.source, NOT_GIVEN),
        cues.pitch,
        cues.velocity,
        cues.clap_embedding,
    )


@torch.no_grad()
def validation_loss(engine: Engine, shard: Shard, rows: int) -> dict[str, float]:
    """Mean loss and per-codebook CE over every row of every worker's validation shard, under the
    conditions of use: the CLAP model without family and source (`valid_loss`, `valid_ce_<k>`),
    and with them as a second figure (`valid_loss_with_metadata`); the metadata model with them."""
    clap_model = engine.module.cfg.conditioning == "clap"
    engine.module.eval()
    totals = torch.zeros(3 + engine.module.cfg.n_q, dtype=torch.float64)  # rows, loss, with metadata, ce sums
    for batch in shard.iter_batches(batch_size=rows, batch_format="numpy"):
        codes, cues = _to_engine(*collate(batch), engine.device)
        out = engine.forward(codes, without_metadata(cues) if clap_model else cues)
        with_metadata = engine.forward(codes, cues).loss.item() if clap_model else out.loss.item()
        n = len(codes)
        totals += torch.cat(
            [
                torch.tensor([n, out.loss.item() * n, with_metadata * n], dtype=torch.float64),
                out.ce_per_codebook.detach().double().cpu() * n,
            ]
        )
    engine.module.train()
    if dist.is_initialized():
        dist.all_reduce(totals)
    n = max(totals[0].item(), 1.0)
    metrics = {"valid_loss": totals[1].item() / n, **{f"valid_ce_{k}": v.item() / n for k, v in enumerate(totals[3:])}}
    if clap_model:
        metrics["valid_loss_with_metadata"] = totals[2].item() / n
    return metrics


def window_means(window: dict[str, list[torch.Tensor | float]]) -> dict[str, float]:
    """Mean of each metric over the window's steps and over every rank (NaN entries skipped).

    The entries are 0-d tensors on the engine's device (or floats), read here once per window: an
    `.item()` per micro-step would wait for the GPU every step.
    """
    names = sorted(window)
    sums = []
    for name in names:
        values = torch.stack([torch.as_tensor(v).detach().double().cpu() for v in window[name]])
        sums.append(torch.stack([values.nansum(), (~values.isnan()).sum().double()]))
    totals = torch.stack(sums)  # [metrics, 2]: sum, count
    if dist.is_initialized():
        dist.all_reduce(totals)
    return {n: (total / count if count else float("nan")) for n, (total, count) in zip(names, totals.tolist())}


def window_code_usage(counts: torch.Tensor) -> dict[str, float]:
    """The CLAP quantizer's code counts [Q, bins] of this worker's window -> the usage of the
    global window: perplexity and live entries, mean and min over the Q codebooks."""
    if dist.is_initialized():
        dist.all_reduce(counts)
    usage = code_usage_from_counts(counts)
    live = usage.live.float()
    return {
        "rvq_perplexity_mean": usage.perplexity.mean().item(),
        "rvq_perplexity_min": usage.perplexity.min().item(),
        "rvq_live_mean": live.mean().item(),
        "rvq_live_min": live.min().item(),
    }


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@dataclass
class Window:
    """What the loop accumulates between two reports: per-step metric values, the CLAP codes' counts
    [Q, bins] (None without CLAP), tokens seen and when the window started."""

    counts: torch.Tensor | None
    values: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)

    def reset(self) -> None:
        self.values.clear()
        if self.counts is not None:
            self.counts.zero_()
        self.tokens, self.start = 0, time.perf_counter()


def start_engine(cfg: Config, rank: int, world_size: int, device: torch.device, rows: int) -> Engine:
    """The freshly initialised model of `cfg` on its engine: the same weights on every rank, then each
    rank its own random streams (dropout)."""
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    engine = make_engine(InstrumentLM(cfg.model), cfg.train, rows, rank, world_size, device)
    seed_everything(cfg.seed * 1_000 + rank + 1)  # then each rank its own dropout draws
    return engine


def initialize_quantizer(cfg: Config, engine: Engine, shard: Shard, world_size: int) -> None:
    """A fresh CLAP run: k-means codebooks over `model.rvq_init_samples` training embeddings
    (`clap_sample.py`), identical on every worker and saved with the checkpoints."""
    clap = engine.module.conditioners.clap
    if clap is not None:
        sample = clap_sample(shard, cfg.model.rvq_init_samples, world_size, cfg.seed, engine.device)
        clap.rvq.initialize(sample)


def train_step(engine: Engine, batches: Iterator[tuple], grad_accum: int, world_size: int, window: Window) -> None:
    """One optimizer step of `grad_accum` micro-batches; their metrics go to `window`."""
    for _ in range(grad_accum):
        codes, cues = _to_engine(*next(batches), engine.device)
        out = engine.forward(codes, cues)
        engine.backward(out.loss)
        grad_norm = engine.step()
        window.tokens += codes.numel() * world_size
        window.values["loss"].append(out.loss.detach())
        window.values["rvq_loss"].append(out.rvq_loss.detach())
        for k, ce in enumerate(out.ce_per_codebook.detach()):
            window.values[f"ce_{k}"].append(ce)
        if window.counts is not None:
            window.counts += code_counts(out.clap_codes, window.counts.shape[1])
    window.values["grad_norm"].append(grad_norm if grad_norm is not None else float("nan"))


def window_metrics(
    engine: Engine, position: Position, window: Window, valid_shard: Shard | None, rows: int, validate: bool
) -> dict:
    """The report of a window (every rank takes part: all-reduces), with the validation loss if `validate`."""
    elapsed = time.perf_counter() - window.start
    metrics = {
        "step": position.step,
        "epoch": position.epoch,
        "lr": engine.lr,
        "tokens_per_s": window.tokens / elapsed,
        "steps_per_s": len(window.values["grad_norm"]) / elapsed,
        **window_means(window.values),
        **(window_code_usage(window.counts) if window.counts is not None else {}),
    }
    if valid_shard is not None and validate:
        metrics.update(validation_loss(engine, valid_shard, rows))
    return metrics


def log_metrics(metrics_url: str, history: list[dict], max_steps: int) -> None:
    """Rank 0: rewrite `<run>/metrics.csv` and print the window's line."""
    storage.write_bytes(metrics_url, metrics_csv(history))
    metrics = history[-1]
    # stdout itself: Ray Train's patched print would log each line twice.
    sys.stdout.write(
        f"step {metrics['step']}/{max_steps} epoch {metrics['epoch']} "
        f"loss {metrics['loss']:.4f}"
        + (f" valid {metrics['valid_loss']:.4f}" if "valid_loss" in metrics else "")
        + f" lr {metrics['lr']:.2e} {metrics['tokens_per_s']:.0f} tok/s\n"
    )
    sys.stdout.flush()


def save_checkpoint(
    checkpointer: Checkpointer, engine: Engine, position: Position, history: list[dict], session: Session
) -> None:
    """Every rank writes and reports its part; once all have, rank 0 commits it as the latest."""
    with tempfile.TemporaryDirectory() as folder:
        checkpointer.write(engine, position, history, folder)
        session.report(history[-1], folder, checkpoint_name(position.step))
    if dist.is_initialized():
        dist.barrier()  # every rank has uploaded its part
    checkpointer.commit(position)


def train(
    cfg: Config,
    rank: int,
    world_size: int,
    device: torch.device,
    train_shard: Shard,
    valid_shard: Shard | None,
    session: Session,
    fault: Fault | None = None,
) -> None:
    """Train (or continue) the run of `cfg` as worker `rank` of `world_size` (a torch.distributed
    group of that size is initialised when world_size > 1). `fault`: a test's injected failure,
    at point "train.step" after each optimizer step."""
    train_cfg = cfg.train
    rows = micro_batch_rows(train_cfg.batch_size, world_size, train_cfg.grad_accum)
    engine, checkpointer = start_engine(cfg, rank, world_size, device, rows), Checkpointer(cfg, rank)
    position, history = Position(), []
    with session.restored_checkpoint() as folder:
        if folder is not None:
            position, history = checkpointer.read(engine, folder)
    if position.step == 0:
        initialize_quantizer(cfg, engine, train_shard, world_size)
    elif rank == 0:
        sys.stdout.write(
            f"resumed at step {position.step} (epoch {position.epoch}, micro-batch {position.batch_in_epoch})\n"
        )
    engine.module.train()

    batches = micro_batches(train_shard, rows, train_cfg.shuffle_buffer, cfg.seed, position)
    clap = engine.module.conditioners.clap
    window = Window(torch.zeros(cfg.model.rvq_codebooks, cfg.model.rvq_bins, device=engine.device) if clap else None)
    metrics_url = storage.join(checkpointer.run_url, METRICS)
    while position.step < train_cfg.max_steps:
        train_step(engine, batches, train_cfg.grad_accum, world_size, window)
        position.step += 1
        fault_point(fault, "train.step", position.step, rank)
        last = position.step == train_cfg.max_steps
        checkpoint_now = position.step % train_cfg.checkpoint_every == 0 or last
        if not (checkpoint_now or position.step % train_cfg.log_every == 0):
            continue
        validate = position.step % train_cfg.eval_every == 0 or last
        history.append(window_metrics(engine, position, window, valid_shard, rows, validate))
        if rank == 0:
            log_metrics(metrics_url, history, train_cfg.max_steps)
        if checkpoint_now:
            save_checkpoint(checkpointer, engine, position, history, session)
        else:
            session.report(history[-1])
        window.reset()
