"""Ray job: a checkpoint (or the ground truth) + an NSynth-format test set -> the paper's Table 1.

    ray job submit -- python -m jobs.evaluate config=paper checkpoint=s3://bucket/runs/paper/export.pt \\
        data.source=s3://bucket/nsynth-test out=s3://bucket/eval/paper
    python -m jobs.evaluate config=tiny checkpoint=ground_truth data.source=<fixture> out=eval/gt

Each test instrument is generated from its fixed cue and scored by one Ray actor of a pool
(`actors=N`, default: one per CPU of the cluster, up to the number of instruments). Written to
`out`: `instruments/<name>.json` + `.npz` as each instrument finishes (a re-run skips those),
`figures/<name>_tc.png` and `_pitch.png`, then `results.md` and `results.json` (last: the run is
complete when it exists). See docs/evaluation.md.
"""
from __future__ import annotations

import io
import sys

import numpy as np
import ray
from tqdm import tqdm

from instrumentgen import storage
from instrumentgen.config import Config, ConfigError, load_config, split_overrides
from instrumentgen.evaluation import (
    GROUND_TRUTH,
    TestInstrument,
    evaluate_instrument,
    load_test_instruments,
    score_cell,
    summary_table,
)
from instrumentgen.metrics.fad import fad
from instrumentgen.plots import pitch_error_figure, tc_matrix_figure
from jobs.entry import job_main

ARRAYS = ("embeddings", "real_embeddings", "tc_matrix")
RESULTS = "results.json"


class InstrumentScorer:
    """Loads the model, codec, CLAP and FAD embedder once; scores one test instrument per call."""

    def __init__(self, cfg: Config, checkpoint: str):
        from instrumentgen.clap import Clap
        from instrumentgen.codec import Codec
        from instrumentgen.metrics.fad import Embedder
        from instrumentgen.model.lm import InstrumentLM

        self.cfg = cfg
        self.lm = None if checkpoint == GROUND_TRUTH else InstrumentLM.load(checkpoint, cfg.codec.device)
        self.codec = Codec.load(cfg.codec.weights, cfg.codec.device, cfg.codec.n_codebooks)
        self.clap = Clap.load(cfg.clap)
        self.embedder = Embedder(cfg.metrics, self.clap)

    def score(self, instrument: TestInstrument, out: str) -> dict:
        """Scores `instrument`, writes its arrays and figures under `out`; returns the JSON row."""
        row = evaluate_instrument(self.cfg, instrument, self.lm, self.codec, self.clap, self.embedder)
        arrays = {key: row.pop(key) for key in ARRAYS}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        storage.write_bytes(storage.join(out, "instruments", f"{instrument.name}.npz"), buffer.getvalue())
        storage.write_bytes(storage.join(out, "figures", f"{instrument.name}_tc.png"),
                            tc_matrix_figure(arrays["tc_matrix"], row["pitches"], row["velocities"],
                                             f"{instrument.name}: TC {row['tc']:.3f}"))
        errors = row.pop("pitch_errors")
        storage.write_bytes(storage.join(out, "figures", f"{instrument.name}_pitch.png"),
                            pitch_error_figure(np.array(row["pitches"]), errors,
                                               f"{instrument.name}: MAD_pitch {score_cell(row['mad_pitch'])}"))
        row["pitch_errors"] = [None if not np.isfinite(e) else float(e) for e in errors]
        storage.write_json(storage.join(out, "instruments", f"{instrument.name}.json"), row)  # last: done
        return row


def parse_args(argv: list[str]) -> tuple[Config, str, str, int, int]:
    """`checkpoint=`, `out=`, `actors=`, `max_instruments=` and config overrides -> (cfg, checkpoint, out, actors, max_instruments)."""
    own = {key: "" for key in ("checkpoint", "out", "actors", "max_instruments")}
    rest = []
    for arg in argv:
        key = arg.split("=", 1)[0]
        if key in own and "=" in arg:
            own[key] = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    for key in ("checkpoint", "out"):
        if not own[key]:
            raise ConfigError(f"{key}= is required; allowed: checkpoint=<exported .pt path or URL> or "
                              f"checkpoint={GROUND_TRUTH}, out=<folder or URL>")
    for key in ("actors", "max_instruments"):
        if own[key] and not own[key].isdigit():
            raise ConfigError(f"{key}={own[key]!r} is not allowed; allowed: a whole number")
    name, overrides = split_overrides(rest)
    cfg = load_config(name, overrides)
    if not cfg.data.source:
        raise ConfigError("data.source is empty; allowed: an NSynth-format test set (json/wav folder or TFRecord, path or URL)")
    if own["checkpoint"] != GROUND_TRUTH and not storage.exists(own["checkpoint"]):
        raise ConfigError(f"checkpoint={own['checkpoint']!r} does not exist; allowed: an exported checkpoint or {GROUND_TRUTH}")
    return cfg, own["checkpoint"], own["out"], int(own["actors"] or 0), int(own["max_instruments"] or 0)


def run(cfg: Config, checkpoint: str, out: str, actors: int = 0, max_instruments: int = 0) -> dict:
    """Scores every test instrument not yet scored under `out`, then writes the tables; returns results.json."""
    instruments = load_test_instruments(cfg, max_instruments)
    if not instruments:
        raise ConfigError(f"data.source={cfg.data.source!r} has no valid notes")
    rows = {}
    for instrument in instruments:
        url = storage.join(out, "instruments", f"{instrument.name}.json")
        if storage.exists(url):
            rows[instrument.name] = storage.read_json(url)
    todo = [i for i in instruments if i.name not in rows]
    print(f"{len(instruments)} test instruments, {len(rows)} already scored in {out}", flush=True)
    if todo:
        size = min(len(todo), actors or max(1, int(ray.cluster_resources().get("CPU", 1))))
        gpus = 1 if cfg.codec.device.startswith("cuda") else 0
        scorer_class = ray.remote(num_cpus=1, num_gpus=gpus)(InstrumentScorer)
        scorers = [scorer_class.remote(cfg, checkpoint) for _ in range(size)]
        try:
            ray.get([scorer.__ray_ready__.remote() for scorer in scorers])
        except ray.exceptions.ActorDiedError as e:
            if not e.actor_init_failed:
                raise
            # The scorer's own error (missing weights, a bad checkpoint) is the last line of Ray's.
            raise ConfigError(str(e).strip().splitlines()[-1].split(": ", 1)[-1]) from None
        pool = ray.util.ActorPool(scorers)
        results = pool.map_unordered(lambda actor, inst: actor.score.remote(inst, out), todo)
        for row in tqdm(results, total=len(todo), desc="instruments", unit="instrument"):
            rows[row["name"]] = row
    ordered = [rows[i.name] for i in instruments]
    embeddings = [np.load(io.BytesIO(storage.read_bytes(storage.join(out, "instruments", f"{i.name}.npz"))))
                  for i in instruments]
    generated = np.concatenate([e["embeddings"] for e in embeddings])
    real = np.concatenate([e["real_embeddings"] for e in embeddings])
    model = "ground truth" if checkpoint == GROUND_TRUTH else checkpoint.rstrip("/").rsplit("/", 1)[-1]
    results, table = summary_table(ordered, fad(generated, real), model, cfg.metrics.fad_embedder)
    all_pitches = np.concatenate([r["pitches"] for r in ordered])
    all_errors = np.array([np.nan if e is None else e for r in ordered for e in r["pitch_errors"]])
    storage.write_bytes(storage.join(out, "figures", "pitch_error.png"),
                        pitch_error_figure(all_pitches, all_errors, f"{model}: pitch error, all test notes"))
    storage.write_bytes(storage.join(out, "results.md"), table.encode())
    storage.write_json(storage.join(out, RESULTS), results)
    print(table, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    return job_main(argv, parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
