"""`make demo`: the whole loop on the tiny config, on this machine, against a local Ray.

    1. a fixture NSynth set (train / valid / test, json/wav and TFRecord, some bad records)
    2. jobs.preprocess: Ray Data -> token shards (codes, CLAP embeddings, metadata)
    3. the codec round trip of one note from the shards
    4. jobs.train: Ray Train, 2 workers, DeepSpeed ZeRO-1 -> loss falling -> exported model
    5. the Serve application on 127.0.0.1: a prompt over HTTP -> 440 notes, SFZ, DecentSampler, zip
    6. jobs.render: a prompt list -> an instrument library with its index and Table 2
    7. jobs.evaluate: FAD, CLAP score, MAD_pitch, TC on the test instruments

    python -m jobs.demo [out] [--serve]     # --serve: keep the app running at the end (Ctrl-C stops it)

Everything lands in `demo-output/` or the folder given (a re-run reuses what is complete). Nothing is
downloaded: the DAC and CLAP models are the tiny random-init ones of the tiny config, so the
instruments are noise shaped by a trained LM, not music. Ray and Serve shut down on exit and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import requests
import torch

from instrumentgen import storage
from instrumentgen.config import load_config
from instrumentgen.data import shards
from instrumentgen.data.synthetic import default_instruments, write_fixture_nsynth, written_fixture
from instrumentgen.metrics.plots import loss_figure
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.pretrained.clap import Clap
from instrumentgen.pretrained.codec import Codec
from instrumentgen.training.checkpoint import METRICS, read_metrics
from jobs import evaluate, preprocess, render, train
from jobs.entry import local_ray
from serve.instruments import model_identity
from serve.local import serving, wait_done

PITCHES = [36, 43, 48, 55, 60, 67, 72, 79, 84]
VELOCITIES = [50, 100]
PROMPT = "warm analog brass"
LIBRARY_PROMPTS = [
    {"prompt": "bright plucked synth", "name": "pluck"},
    {"family": "mallet", "source": "acoustic", "name": "mallet"},
]


def step(number: int, title: str, started: float) -> None:
    """Print the heading of a demo step with the seconds since the demo `started` (`time.perf_counter`)."""
    print(f"\n=== {number}. {title}   [{time.perf_counter() - started:.0f} s]", flush=True)


def fixture(out: str) -> dict[str, str]:
    """train (6 instruments, json/wav, bad records mixed in), valid and test (TFRecord, 2 unseen instruments each)."""
    instruments = default_instruments(10)
    splits = {
        "train": (instruments[:6], ("jsonwav",)),
        "valid": (instruments[6:8], ("tfrecord",)),
        "test": (instruments[8:], ("tfrecord",)),
    }
    urls = {}
    for split, (members, formats) in splits.items():
        root = storage.join(out, "nsynth", split)
        written = written_fixture(root, formats[0])  # a re-run: written whole before
        if written:
            urls[split], done = written, "already written"
        else:
            urls[split] = write_fixture_nsynth(
                root, members, PITCHES, VELOCITIES, formats, with_bad_records=split == "train"
            )[formats[0]]
            done = "written"
        print(
            f"{split}: {len(members)} instruments x {len(PITCHES)} pitches x {len(VELOCITIES)} velocities "
            f"-> {urls[split]} ({done})"
        )
    return urls


def codec_round_trip(cfg, shards_url: str) -> None:
    """Decode one note's codes from the shards and print what came back."""
    codec = Codec.load(cfg.codec)
    table = shards.read_table(shards.shard_files(shards_url, "train")[0]).slice(0, 1).to_pydict()
    codes = torch.tensor(table["codes"][0]).reshape(1, table["n_codebooks"][0], table["n_frames"][0]).long()
    audio = codec.decode(codes)
    print(
        f"note {table['note_str'][0]}: codes {list(codes.shape)} -> decoded audio {list(audio.shape)} "
        f"at {codec.sample_rate_hz} Hz, peak {audio.abs().max():.3f}; "
        f"CLAP embedding [{len(table['clap_embedding'][0])}]"
    )


def show_training(cfg, out: str) -> None:
    """The loss table of the run and its plot (`<out>/figures/training_loss.png`)."""
    history = read_metrics(storage.join(cfg.train.storage_path, cfg.train.run_name, METRICS))
    print("step   train loss   valid loss   lr")
    for row in history:
        valid = f"{row['valid_loss']:10.4f}" if "valid_loss" in row else " " * 10
        print(f"{row['step']:4d}   {row['loss']:10.4f}   {valid}   {row['lr']:.2e}")
    figure = storage.join(out, "figures", "training_loss.png")
    storage.write_bytes(
        figure,
        loss_figure(
            history,
            f"tiny InstrumentLM, {cfg.train.num_workers} workers, {cfg.train.strategy} ZeRO-{cfg.train.zero_stage}",
        ),
    )
    print(f"loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}; plot: {figure}")


def served_before(served: str, checkpoint: str) -> str | None:
    """The folder of a complete instrument the app served earlier for PROMPT (seed 0) with this
    checkpoint's model: the one a POST would answer with (`serve.instruments.instrument_id`)."""
    model_id = model_identity(checkpoint)["model_id"]
    for url in storage.list_files(served, suffix=f"/{storage.MANIFEST}"):  # a manifest: a complete instrument
        manifest = storage.read_json(url)
        if (manifest.get("prompt"), manifest.get("seed"), manifest.get("model_id")) == (PROMPT, 0, model_id):
            return url.rsplit("/", 1)[0]
    return None


def serve_one(cfg, checkpoint: str, out: str, keep_serving: bool) -> str:
    """Start the Serve app, request PROMPT over HTTP, wait for it; returns the served instrument's folder.
    A re-run without `keep_serving` that finds the instrument served already does not start Serve."""
    served = storage.join(out, "served")
    before = None if keep_serving else served_before(served, checkpoint)
    if before:
        print(f"{PROMPT!r} was served already by this model -> {before}/ (--serve starts the app)")
        return before
    serve_cfg = load_config("tiny", [f"serve.checkpoint={checkpoint}", f"serve.storage={served}"])
    with serving(serve_cfg) as base:
        print(f"application up at {base}; POST {base}/v1/instruments {{'prompt': {PROMPT!r}, 'seed': 0}}")
        answer = requests.post(f"{base}/v1/instruments", json={"prompt": PROMPT, "seed": 0}, timeout=60).json()
        status = wait_done(base, answer["id"], timeout_s=600, progress=True)
        if status["status"] != "done":
            raise RuntimeError(f"the served instrument failed: {status.get('error')}")
        print(
            f"{PROMPT!r}: {status['notes_total']} notes, TC {status['tc']:.3f}, served by {len(status['workers'])} "
            f"Generator replica(s) -> {served}/{answer['id']}/"
        )
        print(
            f"page: {base}/?id={answer['id']}   status: {base}{answer['status_url']}   bundle: {base}{status['bundle']}"
        )
        if keep_serving:
            print("serving until Ctrl-C (open the page above in a browser on this machine)", flush=True)
            while True:
                time.sleep(3600)
    return storage.join(served, answer["id"])


def render_library(cfg, checkpoint: str, out: str) -> dict:
    """jobs.render over a few prompts (full instruments) into `<out>/library`, with the Table 2 report."""
    prompts = storage.join(out, "prompts.jsonl")
    storage.write_bytes(prompts, "".join(json.dumps(line) + "\n" for line in LIBRARY_PROMPTS).encode())
    return render.run(cfg, checkpoint, prompts, storage.join(out, "library"), report=True)


def show_clap_codes(cfg, checkpoint: str) -> None:
    """The RVQ codes each test instrument's CLAP cue quantizes to, and how the test notes use each codebook."""
    from instrumentgen.evaluation.table1 import load_test_instruments

    lm, clap = InstrumentLM.load(checkpoint), Clap.load(cfg.clap)
    rvq, rate = lm.conditioners.clap.rvq, cfg.data.sample_rate_hz
    instruments = load_test_instruments(cfg)
    references = torch.cat(
        [clap.embed_audio(torch.from_numpy(i.audio)[i.reference_index()][None], rate) for i in instruments]
    )
    codes = rvq.encode(references)  # [instruments, codebooks]
    for instrument, instrument_codes in zip(instruments, codes.tolist()):
        print(f"{instrument.name}: CLAP cue -> RVQ codes {instrument_codes}")
    notes = torch.cat([clap.embed_audio(torch.from_numpy(i.audio), rate) for i in instruments])
    usage = rvq.code_usage(notes)
    for index, (perplexity, live) in enumerate(zip(usage.perplexity.tolist(), usage.live.tolist())):
        print(
            f"codebook {index}: perplexity {perplexity:.1f}, {live} of {rvq.bins} entries used by the "
            f"{len(notes)} test notes"
        )
    if len({tuple(c) for c in codes.tolist()}) < len(instruments):
        print(
            "(two instruments share all their codes: the tiny random-init CLAP maps different instruments to "
            "nearly parallel embeddings, cosine ~0.99; equal codes give equal generations)"
        )


def run_demo(out: str, keep_serving: bool) -> None:
    """Steps 1-7 of the module docstring, everything under `out`."""
    start = time.perf_counter()
    step(1, "fixture NSynth set", start)
    urls = fixture(out)
    shards_url = storage.join(out, "shards")
    overrides = [f"data.splits.{split}={url}" for split, url in urls.items()] + [f"data.shards={shards_url}"]
    cfg = load_config("tiny", overrides)

    step(2, "jobs.preprocess (Ray Data)", start)
    preprocess.run(cfg)

    step(3, "codec round trip of one note from the shards", start)
    codec_round_trip(cfg, shards_url)

    step(4, "jobs.train (Ray Train, DeepSpeed ZeRO-1 on 2 CPU workers)", start)
    cfg = load_config("tiny", [*overrides, f"train.storage_path={storage.join(out, 'runs')}", "train.run_name=demo"])
    checkpoint = train.run(cfg)
    # Ray Train's trainer leaves its SIGINT handler installed (one Ctrl-C aborts a finished run, the third
    # calls sys.exit): from here on, Ctrl-C is Python's KeyboardInterrupt again, caught in main.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    show_training(cfg, out)

    step(5, f"the Serve application: {PROMPT!r} over HTTP -> 440 notes -> WAV + SFZ + DecentSampler + zip", start)
    served = serve_one(cfg, checkpoint, out, keep_serving)

    step(6, f"jobs.render: {len(LIBRARY_PROMPTS)} prompts -> an instrument library with its index and Table 2", start)
    summary = render_library(cfg, checkpoint, out)

    step(7, "jobs.evaluate on the test instruments", start)
    test_cfg = load_config("tiny", [f"data.source={urls['test']}"])
    evaluate.run(test_cfg, [checkpoint], storage.join(out, "eval"))
    show_clap_codes(test_cfg, checkpoint)

    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; everything is under {out}:")
    for what, where in (
        ("fixture NSynth", "nsynth/"),
        ("token shards", "shards/"),
        ("training run", "runs/demo/"),
        ("model", checkpoint),
        ("served instrument", served),
        (
            "library",
            "library/ (index.parquet, "
            f"results.md; {summary['rendered']} rendered, {summary['skipped']} already complete)",
        ),
        ("evaluation", "eval/results.md"),
        ("figures", "figures/"),
    ):
        print(f"  {what:18s} {where}")
    print(
        "The tiny DAC and CLAP are random-init, so these instruments are noise, not music. For real ones, give the\n"
        "released weights (codec.weights=44khz clap.weights=music, or paths/URLs of the files) and train\n"
        "config=paper on a GPU cluster: docs/cluster.md, docs/serving.md, docs/batch.md."
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.demo [out] [--serve]`: everything under `out` (default `demo-output/`)."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", nargs="?", default="demo-output", help="output folder (default demo-output)")
    parser.add_argument("--serve", action="store_true", help="keep the Serve app running at the end")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    out = os.path.abspath(args.out)
    try:
        with local_ray(quiet=True):  # a test's Ray, or a fresh local one shut down at the end
            run_demo(out, args.serve)
    except KeyboardInterrupt:
        print(f"\nstopped: Ray and Serve are shut down; a re-run resumes from what is complete under {out}")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
