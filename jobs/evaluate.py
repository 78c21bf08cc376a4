"""Ray job: checkpoints (and the ground truth) + an NSynth-format test set -> the paper's Table 1.

    ray job submit -- python -m jobs.evaluate config=paper data.source=s3://bucket/nsynth-test \\
        checkpoints=metadata=s3://bucket/runs/meta/model.pt,clap=s3://bucket/runs/clap/model.pt,ground_truth \\
        out=s3://bucket/eval/table1
    python -m jobs.evaluate config=tiny checkpoint=ground_truth data.source=<fixture> out=eval/gt

Each model is scored in turn: each test instrument is generated from its fixed cue and scored by
one Ray actor of a pool (`actors=N`, default: one per CPU of the cluster, up to the number of
instruments). Written to `out`, per model under `<model folder>/`: `instruments/<name>.json` +
`.npz` as each instrument finishes (a re-run skips those), `figures/<name>_tc.png`,
`_pitch.png` and `pitch_error.png`; then for all models `results.md` and `results.json` (last:
the run is complete when it exists). See docs/evaluation.md.
"""

from __future__ import annotations

import io
import re
import sys
from dataclasses import dataclass

import numpy as np
import ray
from tqdm import tqdm

from instrumentgen import storage
from instrumentgen.config import Config, ConfigError
from instrumentgen.data.preprocess import check_sources_exist
from instrumentgen.evaluation import instrument_files
from instrumentgen.evaluation.table1 import (
    GROUND_TRUTH,
    TestInstrument,
    evaluate_instrument,
    load_test_instruments,
    model_row,
    summary_table,
)
from instrumentgen.metrics.fad import fad
from instrumentgen.metrics.plots import pitch_error_figure
from jobs.entry import job_main, parse_job_args

RESULTS = "results.json"
CHECKPOINT = f"<exported .pt path or URL, or {GROUND_TRUTH}>"
REQUIRED = {"out": "<folder or URL>"}
OPTIONAL = {
    "checkpoints": f"<comma-separated list of [name=]{CHECKPOINT}>",
    "checkpoint": CHECKPOINT,
    "actors": "<whole number of scorers; default one per CPU>",
    "max_instruments": "<whole number: the first N test instruments>",
}


@dataclass(frozen=True)
class Model:
    """One row of the table: `name` (its model column), `checkpoint` (URL or ground_truth), `folder` under out."""

    name: str
    checkpoint: str
    folder: str


def models_from(specs: list[str]) -> list[Model]:
    """`[name=]checkpoint` items -> models. Unnamed checkpoints are named by the shortest path
    suffix that tells them apart (runs/a/model.pt, runs/b/model.pt -> a/model.pt, b/model.pt)."""
    named, paths = {}, {}
    for i, spec in enumerate(specs):
        label, _, url = spec.partition("=") if re.match(r"^[\w.-]+=", spec) else ("", "", spec)
        if url == GROUND_TRUTH:
            named[i] = (label or "ground truth", url)
        elif label:
            named[i] = (label, url)
        else:
            paths[i] = url.rstrip("/").split("/")
    depth = 1
    while True:
        names = {i: "/".join(parts[-depth:]) for i, parts in paths.items()}
        clashes = [n for n in names.values() if list(names.values()).count(n) > 1]
        if not clashes or depth > max((len(p) for p in paths.values()), default=0):
            break
        depth += 1
    models = [Model(*named[i], "") if i in named else Model(names[i], specs[i], "") for i in range(len(specs))]
    models = [Model(m.name, m.checkpoint, re.sub(r"[^\w.-]+", "_", m.name)) for m in models]
    folders = [m.folder for m in models]
    if len(set(folders)) < len(folders):
        raise ConfigError(
            f"checkpoints={','.join(specs)!r} gives two models one name ({', '.join(folders)}); "
            "allowed: distinct checkpoints, or name them as <name>=<url>"
        )
    return models


class InstrumentScorer:
    """A Ray actor of the scoring pool: loads the models once (`ScoringModels`), then per call scores
    one test instrument (`evaluate_instrument`) and writes its figures and record (`instrument_files`)."""

    def __init__(self, cfg: Config, checkpoint: str):
        from instrumentgen.evaluation.scoring_models import ScoringModels  # in the actor: the job starts light

        self.cfg, self.models = cfg, ScoringModels.load(cfg, checkpoint)

    def score(self, instrument: TestInstrument, out: str) -> dict:
        """Scores `instrument`, writes its files under `out`; returns its JSON row."""
        m = self.models
        scores = evaluate_instrument(self.cfg, instrument, m.lm, m.codec, m.clap, m.embedder)
        instrument_files.write_figures(out, instrument.name, scores)
        return instrument_files.write_record(out, instrument.name, scores)  # the JSON row last: done


def check_checkpoint(url: str) -> None:
    """`ConfigError` in one line unless `url` is ground_truth or loads as an InstrumentLM."""
    from instrumentgen.model.lm import InstrumentLM, LMError

    if url == GROUND_TRUTH:
        return
    if not storage.exists(url):
        raise ConfigError(f"checkpoint={url!r} does not exist; allowed: {CHECKPOINT}")
    try:
        InstrumentLM.load(url)
    except (LMError, RuntimeError, KeyError, TypeError) as e:  # torch's reasons run to many lines
        raise ConfigError(
            f"checkpoint={url!r} is not an InstrumentLM checkpoint ({type(e).__name__}); "
            "allowed: a file written by InstrumentLM.save, e.g. <run>/model.pt of jobs.train"
        ) from None


def parse_args(argv: list[str]) -> tuple[Config, list[str], str, int, int]:
    """Own arguments (`REQUIRED`, `OPTIONAL`) and config overrides -> (cfg, checkpoints, out, actors,
    max_instruments)."""
    own, cfg = parse_job_args(argv, REQUIRED, OPTIONAL)
    if own["checkpoint"] and own["checkpoints"]:
        raise ConfigError("checkpoint= and checkpoints= are both given; allowed: one of them")
    specs = (own["checkpoints"] or own["checkpoint"] or "").split(",")
    if not any(specs):
        raise ConfigError(f"checkpoints= is required; allowed: checkpoints={OPTIONAL['checkpoints']}")
    for key in ("actors", "max_instruments"):
        if own[key] is not None and not own[key].isdigit():
            raise ConfigError(f"{key}={own[key]!r} is not allowed; allowed: a whole number")
    if not cfg.data.source:
        raise ConfigError(
            "data.source is empty; allowed: an NSynth-format test set (json/wav folder or TFRecord, path or URL)"
        )
    check_sources_exist(cfg.data, {"test": cfg.data.source})
    models = models_from(specs)
    for model in models:
        check_checkpoint(model.checkpoint)
    return cfg, specs, own["out"], int(own["actors"] or 0), int(own["max_instruments"] or 0)


def score_model(cfg: Config, model: Model, instruments: list[TestInstrument], out: str, actors: int) -> list[dict]:
    """The JSON rows of `instruments` for one model, scoring those not yet scored under `out`."""
    rows = {}
    for instrument in instruments:
        url = instrument_files.row_url(out, instrument.name)
        if storage.exists(url):
            rows[instrument.name] = storage.read_json(url)
    todo = [i for i in instruments if i.name not in rows]
    print(f"{model.name}: {len(instruments)} test instruments, {len(rows)} already scored in {out}", flush=True)
    if todo:
        size = min(len(todo), actors or max(1, int(ray.cluster_resources().get("CPU", 1))))
        gpus = 1 if cfg.codec.device.startswith("cuda") else 0
        scorer_class = ray.remote(num_cpus=1, num_gpus=gpus)(InstrumentScorer)
        scorers = [scorer_class.remote(cfg, model.checkpoint) for _ in range(size)]
        try:
            ray.get([scorer.__ray_ready__.remote() for scorer in scorers])
            pool = ray.util.ActorPool(scorers)
            results = pool.map_unordered(lambda actor, inst: actor.score.remote(inst, out), todo)
            for row in tqdm(results, total=len(todo), desc=f"{model.name}: instruments", unit="instrument"):
                rows[row["name"]] = row
        except ray.exceptions.ActorDiedError as e:
            if not e.actor_init_failed:
                raise
            # The scorer's own error (missing weights) is the last line of Ray's.
            raise ConfigError(str(e).strip().splitlines()[-1].split(": ", 1)[-1]) from None
        finally:
            for scorer in scorers:  # the next model's pool needs their CPUs
                ray.kill(scorer)
    return [rows[i.name] for i in instruments]


def run(cfg: Config, checkpoints: list[str], out: str, actors: int = 0, max_instruments: int = 0) -> dict:
    """Scores every model of `checkpoints` (`[name=]url` or ground_truth) on the test set, each
    resuming under `out/<model folder>`, then writes one table for all; returns results.json."""
    models = models_from(checkpoints)
    instruments = load_test_instruments(cfg, max_instruments)
    if not instruments:
        raise ConfigError(f"data.source={cfg.data.source!r} has no valid notes")
    model_rows = []
    for model in models:
        folder = storage.join(out, model.folder)
        rows = score_model(cfg, model, instruments, folder, actors)
        arrays = [
            np.load(io.BytesIO(storage.read_bytes(storage.join(folder, "instruments", f"{i.name}.npz"))))
            for i in instruments
        ]
        fad_value = fad(
            np.concatenate([a["embeddings"] for a in arrays]), np.concatenate([a["real_embeddings"] for a in arrays])
        )
        all_errors = np.array([np.nan if e is None else e for r in rows for e in r["pitch_errors"]])
        storage.write_bytes(
            storage.join(folder, "figures", "pitch_error.png"),
            pitch_error_figure(
                np.concatenate([r["pitches"] for r in rows]), all_errors, f"{model.name}: pitch error, all test notes"
            ),
        )
        model_rows.append(model_row(model.name, model.checkpoint, rows, fad_value))
    results, table = summary_table(model_rows, cfg.metrics.fad_embedder)
    storage.write_bytes(storage.join(out, "results.md"), table.encode())
    storage.write_json(storage.join(out, RESULTS), results)
    print(table, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """The job's command line (see the module docstring)."""
    return job_main(argv, parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
