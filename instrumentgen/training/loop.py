"""The loop every training worker runs: batching, validation, metric windows, checkpoints.

Per optimizer step: `grad_accum` micro-batches of `batch_size / (workers * grad_accum)` rows of
this worker's shard of the token shards, the LM loss (mean cross-entropy of the K codebooks)
with the paper's per-sample attribute dropout done inside the model, the engine's step
(DeepSpeed or DDP, `engines.py`).

Every `log_every` steps the window's mean metrics (and the CLAP quantizer's code usage) are
reported and rank 0 rewrites `<run>/metrics.csv`; every `eval_every` steps the validation loss
over the held-out shard is added; every `checkpoint_every` steps (and at `max_steps`) a
checkpoint (`checkpoint.py`) is reported. A restarted worker group (a failure, or the same run
submitted again) loads the latest checkpoint and continues at the same step, data position and
random state.

`train` is plain PyTorch: it gets its rank, device, data shards (anything with Ray Data's
`iter_batches`) and a `Session` to report to; `worker.py` is the Ray Train adapter.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import AbstractContextManager
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


def _to_engine(codes: torch.Tensor, cues: Cues, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, Cues]:
    cues = cues.to(device)
    if cues.clap_embedding is not None:
        cues = cues.with_clap(cues.clap_embedding.to(dtype))
    return codes.to(device), cues


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
        codes, cues = _to_engine(*collate(batch), engine.device, engine.dtype)
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

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    engine = make_engine(InstrumentLM(cfg.model), train_cfg, rows, rank, world_size, device)
    seed_everything(cfg.seed * 1_000 + rank + 1)  # then each rank its own dropout draws
    checkpointer = Checkpointer(cfg, rank)
    position, history = Position(), []
    with session.restored_checkpoint() as folder:
        if folder is not None:
            position, history = checkpointer.read(engine, folder)
    if rank == 0 and position.step:
        sys.stdout.write(
            f"resumed at step {position.step} (epoch {position.epoch}, micro-batch {position.batch_in_epoch})\n"
        )
    engine.module.train()

    batches = micro_batches(train_shard, rows, train_cfg.shuffle_buffer, cfg.seed, position)
    window: dict[str, list[float]] = defaultdict(list)
    rvq = engine.module.conditioners.clap.rvq if engine.module.conditioners.clap is not None else None
    counts = torch.zeros(cfg.model.rvq_codebooks, cfg.model.rvq_bins, device=engine.device) if rvq else None
    window_start, tokens = time.perf_counter(), 0
    metrics_url = storage.join(checkpointer.run_url, METRICS)
    while position.step < train_cfg.max_steps:
        for _ in range(train_cfg.grad_accum):
            codes, cues = _to_engine(*next(batches), engine.device, engine.dtype)
            out = engine.forward(codes, cues)
            engine.backward(out.loss)
            grad_norm = engine.step()
            tokens += codes.numel() * world_size
            window["loss"].append(out.loss.detach())
            window["rvq_loss"].append(out.rvq_loss.detach())
            for k, ce in enumerate(out.ce_per_codebook.detach()):
                window[f"ce_{k}"].append(ce)
            if counts is not None:
                counts += code_counts(out.clap_codes, cfg.model.rvq_bins)
        position.step += 1
        window["grad_norm"].append(grad_norm if grad_norm is not None else float("nan"))
        fault_point(fault, "train.step", position.step, rank)

        last = position.step == train_cfg.max_steps
        checkpoint_now = position.step % train_cfg.checkpoint_every == 0 or last
        if not (checkpoint_now or position.step % train_cfg.log_every == 0):
            continue
        elapsed = time.perf_counter() - window_start
        metrics = {
            "step": position.step,
            "epoch": position.epoch,
            "lr": engine.lr,
            "tokens_per_s": tokens / elapsed,
            "steps_per_s": len(window["grad_norm"]) / elapsed,
            **window_means(window),
            **(window_code_usage(counts) if counts is not None else {}),
        }
        if valid_shard is not None and (position.step % train_cfg.eval_every == 0 or last):
            metrics.update(validation_loss(engine, valid_shard, rows))
        history.append(metrics)
        if rank == 0:
            storage.write_bytes(metrics_url, metrics_csv(history))
            # stdout itself: Ray Train's patched print would log each line twice.
            sys.stdout.write(
                f"step {position.step}/{train_cfg.max_steps} epoch {position.epoch} "
                f"loss {metrics['loss']:.4f}"
                + (f" valid {metrics['valid_loss']:.4f}" if "valid_loss" in metrics else "")
                + f" lr {metrics['lr']:.2e} {metrics['tokens_per_s']:.0f} tok/s\n"
            )
            sys.stdout.flush()
        if checkpoint_now:
            with tempfile.TemporaryDirectory() as folder:
                checkpointer.write(engine, position, history, folder)
                session.report(metrics, folder, checkpoint_name(position.step))
            if dist.is_initialized():
                dist.barrier()  # every rank has uploaded its part
            checkpointer.commit(position)
        else:
            session.report(metrics)
        window.clear()
        if counts is not None:
            counts.zero_()
        window_start, tokens = time.perf_counter(), 0
