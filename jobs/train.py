"""Ray job: train InstrumentLM on token shards with Ray Train + DeepSpeed (or DDP), then export it.

    ray job submit --working-dir . -- python -m jobs.train config=paper \\
        data.shards=s3://bucket/shards train.storage_path=s3://bucket/runs train.run_name=paper-v1
    python -m jobs.train config=tiny data.shards=<url> train.strategy=ddp train.max_steps=100

`TorchTrainer` runs `jobs.train_worker.train_loop_per_worker` on `train.num_workers` workers
(`train.use_gpu`, `train.cpus_per_worker`), each on its split of the `train` shards (and of the
validation shards: held-out instruments when the shards have them, else NSynth's valid split).
Checkpoints go to `<train.storage_path>/<train.run_name>/`; submitting the same run name again
continues from its latest checkpoint, and `train.max_failures` worker-group restarts are allowed.
When training ends the latest checkpoint's weights are exported to `<run>/model.pt`
(`train.export_dtype`), which `instrumentgen generate`, serving and `jobs.evaluate` load.
See docs/training.md.
"""

from __future__ import annotations

import os
import sys

import ray
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from instrumentgen import storage
from instrumentgen.config import Config, ConfigError
from instrumentgen.data import shards
from instrumentgen.faults import Fault
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.training.checkpoint import MODEL
from instrumentgen.training.loop import micro_batch_rows
from instrumentgen.training.run_storage import committed, committed_checkpoint_url, ray_storage
from jobs.entry import config_from_argv, job_main
from jobs.shard_dataset import read_shards
from jobs.train_worker import run_checkpoint, train_loop_per_worker

VALIDATION_SPLITS = (shards.HOLDOUT, "valid")  # held-out instruments first, as the paper validates


def validation_split(shards_url: str) -> str | None:
    """The split that validation reads: held-out instruments if any, else NSynth's valid split."""
    files = shards.read_manifest(shards_url)["files"]
    return next((split for split in VALIDATION_SPLITS if files.get(split)), None)


def build_trainer(cfg: Config, fault: Fault | None = None) -> TorchTrainer:
    """The TorchTrainer of `cfg`; `fault`: a test's injected failure (point "train.step")."""
    train = cfg.train
    context = ray.data.DataContext.get_current()  # a split per epoch: no bar and no plan printed each time
    context.enable_progress_bars, context.print_on_execution_start = False, False
    datasets = {"train": read_shards(cfg.data.shards, "train")}
    valid = validation_split(cfg.data.shards)
    if valid:
        datasets["valid"] = read_shards(cfg.data.shards, valid)
    if train.materialize:
        datasets = {name: ds.materialize() for name, ds in datasets.items()}
    path, filesystem = ray_storage(train.storage_path)
    resources = {"CPU": train.cpus_per_worker, **({"GPU": 1} if train.use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "fault": fault, "datasets": list(datasets)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=train.num_workers, use_gpu=train.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=train.run_name,
            storage_path=path,
            storage_filesystem=filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),  # not a line per report per rank
        datasets=datasets,
        # Preserved order makes each worker's split, hence the batches, the same in every attempt.
        dataset_config=ray.train.DataConfig(execution_options=ray.data.ExecutionOptions(preserve_order=True)),
        torch_config=TorchConfig(backend="nccl" if train.use_gpu else "gloo"),
    )


def export(checkpoint: ray.train.Checkpoint, url: str, dtype: str) -> str:
    """The checkpoint's consolidated weights -> one inference file at `url` (`InstrumentLM.load`)."""
    with checkpoint.as_directory() as folder:
        return InstrumentLM.load(os.path.join(folder, MODEL)).save(url, dtype)


def run(cfg: Config, fault: Fault | None = None) -> str:
    """Train (or continue) the run of `cfg`, export it; returns the exported checkpoint's URL.

    `fault`: a test's injected failure (`instrumentgen.faults`) at point "train.step".
    """
    run_url = storage.join(cfg.train.storage_path, cfg.train.run_name)
    latest = committed(run_url)
    if latest and latest["step"] >= cfg.train.max_steps:  # finished: no worker group to start
        print(f"run {cfg.train.run_name!r} finished at step {latest['step']}; exporting its checkpoint", flush=True)
        checkpoint = run_checkpoint(storage.join(run_url, latest["checkpoint"]))
    else:
        result = build_trainer(cfg, fault).fit()
        # Ray Train's own index of the run can be gone (a crashed job) while our commit is not
        committed_url = committed_checkpoint_url(run_url)
        checkpoint = result.checkpoint or (run_checkpoint(committed_url) if committed_url else None)
    if checkpoint is None:
        raise ConfigError(f"run {cfg.train.run_name!r} ended without a checkpoint")
    url = export(checkpoint, storage.join(run_url, MODEL), cfg.train.export_dtype)
    print(f"exported {url}", flush=True)
    return url


def check(cfg: Config) -> None:
    """Fail before starting Ray on settings that cannot train."""
    micro_batch_rows(cfg.train.batch_size, cfg.train.num_workers, cfg.train.grad_accum)
    if not cfg.data.shards:
        raise ConfigError("data.shards is empty; allowed: the output folder or URL of jobs.preprocess")
    if not storage.exists(storage.join(cfg.data.shards, storage.MANIFEST)):
        raise ConfigError(
            f"data.shards={cfg.data.shards!r} has no manifest.json; allowed: a complete "
            "jobs.preprocess output (run it, or re-run it to finish)"
        )


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.train config=<name> key=value ...`: 0 when trained, 2 on a user error (one line)."""
    return job_main(argv, lambda args: config_from_argv(args, check), run)


if __name__ == "__main__":
    sys.exit(main())
