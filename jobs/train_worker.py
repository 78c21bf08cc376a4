"""The Ray Train edge of training: TorchTrainer's per-worker function (`instrumentgen/training/`
itself never imports Ray).

It asks Ray Train for this worker's rank, device and data shards, resumes from the checkpoint
Ray Train hands back (or the run's committed one, `run_storage`), and reports metrics and
checkpoint folders to it; everything else is `loop.train`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import ray.train
import ray.train.torch

from instrumentgen import storage
from instrumentgen.config import Config
from instrumentgen.faults import Fault
from instrumentgen.training.loop import train
from instrumentgen.training.run_storage import committed_checkpoint_url, ray_storage


def run_checkpoint(url: str) -> ray.train.Checkpoint:
    """A checkpoint folder of a run (path or fsspec URL) as a Ray Train checkpoint."""
    path, filesystem = ray_storage(url)
    return ray.train.Checkpoint(path=path, filesystem=filesystem)


class RayTrainSession:
    """`loop.Session` on Ray Train: reports go to `ray.train.report`."""

    def __init__(self, run_url: str):
        self.run_url = run_url

    def report(self, metrics: dict, checkpoint_folder: str | None = None, checkpoint_name: str | None = None) -> None:
        if checkpoint_folder is None:
            ray.train.report(metrics)
        else:
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(checkpoint_folder),
                checkpoint_dir_name=checkpoint_name,
            )

    @contextmanager
    def restored_checkpoint(self) -> Iterator[str | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:  # a re-submitted run: Ray Train's own index may be gone, ours is not
            url = committed_checkpoint_url(self.run_url)
            checkpoint = run_checkpoint(url) if url else None
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield folder


def train_loop_per_worker(loop_config: dict) -> None:
    """TorchTrainer's function; `loop_config` = {"cfg": Config, "datasets": names, "fault": Fault | None}."""
    cfg: Config = loop_config["cfg"]
    fault: Fault | None = loop_config.get("fault")
    context = ray.train.get_context()
    valid = ray.train.get_dataset_shard("valid") if "valid" in loop_config["datasets"] else None
    session = RayTrainSession(storage.join(cfg.train.storage_path, cfg.train.run_name))
    train(
        cfg,
        context.get_world_rank(),
        context.get_world_size(),
        ray.train.torch.get_device(),
        ray.train.get_dataset_shard("train"),
        valid,
        session,
        fault,
    )
