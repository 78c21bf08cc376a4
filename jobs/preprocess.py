"""Ray job: NSynth (json/wav or TFRecord, local or any fsspec URL) -> token shards for training.

    ray job submit -- python -m jobs.preprocess config=paper \\
        data.source=s3://bucket/nsynth-train.tfrecord data.shards=s3://bucket/shards
    python -m jobs.preprocess config=tiny data.splits.train=<url> data.splits.valid=<url> \\
        data.splits.test=<url> data.shards=<url> data.holdout_instruments=0.1

Ray Data pipeline: units of input records -> read + validate + crop + resample 16 kHz -> 44.1 kHz
(CPU tasks, one per unit) -> DAC codes + CLAP embedding (actor pool, `data.encoder_*` sizes
and GPUs) -> the driver commits each unit's shards (`instrumentgen.data.shard_writer.ShardWriter`).
Re-running with the same `data.shards` finishes what is missing; see docs/preprocess.md.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

import ray

from instrumentgen import storage
from instrumentgen.config import Config
from instrumentgen.data import preprocess, shards
from instrumentgen.data.shard_writer import ShardWriter
from instrumentgen.faults import Fault
from jobs.entry import config_from_argv, job_main


def build_dataset(cfg: Config, units: list[dict]) -> ray.data.Dataset:
    """The Ray Data pipeline over `units` (see `instrumentgen.data.preprocess`): encoded note rows."""
    data = cfg.data
    ds = ray.data.from_items(units, override_num_blocks=len(units))
    # One read task per unit: `batch_size=1` makes each task take one unit (a larger batch would
    # bundle several units into one task). Its own CPU share leaves the encoders their cores and
    # keeps Ray Data from fusing it into the encoder actors, which would serialise the job.
    ds = ds.map_batches(
        preprocess.read_and_resample,
        batch_size=1,
        num_cpus=data.reader_num_cpus,
        fn_kwargs={
            "holdout_fraction": data.holdout_instruments,
            "duration_s": data.note_duration_s,
            "sample_rate_hz": data.sample_rate_hz,
        },
    )
    return ds.map_batches(
        preprocess.NoteEncoder,
        fn_constructor_args=(cfg,),
        batch_size=None,  # whole blocks
        compute=ray.data.ActorPoolStrategy(size=data.encoder_actors),
        num_cpus=data.encoder_num_cpus,
        num_gpus=data.encoder_num_gpus,
    )


def run(cfg: Config, fault: Fault | None = None) -> dict:
    """Preprocess every split of `cfg.data` into `cfg.data.shards`; returns the manifest.

    Units already committed by an earlier run with the same settings are skipped.
    `fault`: a test's failure at "preprocess.unit" (see `instrumentgen.data.shard_writer`)."""
    sources = preprocess.split_sources(cfg.data)
    out_hash = preprocess.output_hash(cfg, sources)
    manifest_url = storage.join(cfg.data.shards, storage.MANIFEST)
    if storage.exists(manifest_url):
        manifest = storage.read_json(manifest_url)
        if manifest["config_hash"] != out_hash:
            raise shards.ShardError(
                f"data.shards={cfg.data.shards!r} is complete with config hash "
                f"{manifest['config_hash']}, this run has {out_hash}; use a fresh data.shards"
            )
        print(f"{cfg.data.shards} is already complete: {manifest['kept']} notes kept", flush=True)
        return manifest

    start = time.perf_counter()
    units = preprocess.plan_units(sources, cfg.data.format, cfg.data.notes_per_shard)
    writer = ShardWriter(cfg.data.shards, out_hash, sources, fault)
    done = writer.completed_units()
    todo = [u for u in units if (u["source_split"], u["unit"]) not in done]
    print(
        f"{len(units)} units of up to {cfg.data.notes_per_shard} records in {', '.join(sources)}; "
        f"{len(units) - len(todo)} already complete",
        flush=True,
    )
    if todo:
        for batch in build_dataset(cfg, todo).iter_batches(batch_size=None, batch_format="numpy"):
            writer.add(batch)
    settings = {
        "note_duration_s": cfg.data.note_duration_s,
        "sample_rate_hz": cfg.data.sample_rate_hz,
        "holdout_instruments": cfg.data.holdout_instruments,
        "notes_per_shard": cfg.data.notes_per_shard,
    }
    manifest = writer.finish([(u["source_split"], u["unit"]) for u in units], settings)
    print(summary(manifest, writer.kept_this_run, time.perf_counter() - start), flush=True)
    return manifest


def summary(manifest: dict, kept_this_run: int, elapsed_s: float) -> str:
    """The lines the job ends with: notes written, kept and skipped counts, code shape and models."""
    skipped = Counter(manifest["skipped"])
    return "\n".join(
        [
            f"wrote {sum(manifest['kept'].values())} notes ({kept_this_run} in this run, "
            f"{kept_this_run / max(elapsed_s, 1e-9):.1f} notes/s over {elapsed_s:.1f} s)",
            "kept: " + ", ".join(f"{split} {n}" for split, n in manifest["kept"].items()),
            "skipped: " + (", ".join(f"{reason} {n}" for reason, n in skipped.most_common()) or "none"),
            f"codes [{manifest['n_codebooks']}, {manifest['n_frames']}] from {manifest['codec_model_id']}, "
            f"CLAP {manifest['clap_model_id']}, config hash {manifest['config_hash']}",
        ]
    )


def check(cfg: Config) -> None:
    """The settings and the sources, before Ray starts: a missing source is one line, not a traceback."""
    preprocess.check_sources_exist(cfg.data, preprocess.split_sources(cfg.data))


def main(argv: list[str] | None = None) -> int:
    """The job's command line: config=<name> and config overrides (see the module docstring)."""
    return job_main(argv, lambda args: config_from_argv(args, check), run)


if __name__ == "__main__":
    sys.exit(main())
