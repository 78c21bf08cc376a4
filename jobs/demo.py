"""`make demo`: the whole loop on the tiny config, on this machine, against a local Ray.

    1. a fixture NSynth set (train / valid / test, json/wav and TFRecord, some bad records)
    2. jobs.preprocess: Ray Data -> token shards (codes, CLAP embeddings, metadata)
    3. the codec round trip of one note from the shards
    4. jobs.train: Ray Train, 2 workers, DeepSpeed ZeRO-1 -> loss falling -> exported model
    5. generation: a prompt -> 440 notes -> WAVs + SFZ + DecentSampler preset
    6. jobs.evaluate: FAD, CLAP score, MAD_pitch, TC on the test instruments

Everything lands in `demo-output/` or the folder given (a re-run reuses what is complete). Nothing is downloaded:
the DAC and CLAP models are the tiny random-init ones of the tiny config.
"""
from __future__ import annotations

import os
import sys
import time

import ray
import torch

from instrumentgen import shards, storage
from instrumentgen.clap import Clap
from instrumentgen.codec import Codec
from instrumentgen.config import load_config
from instrumentgen.generate import InstrumentCue, generate_instrument
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.plots import loss_figure
from instrumentgen.testing import default_instruments, write_fixture_nsynth
from instrumentgen.training.checkpoint import METRICS, read_metrics
from jobs import evaluate, preprocess, train
from jobs.entry import start_ray

PITCHES = [36, 43, 48, 55, 60, 67, 72, 79, 84]
VELOCITIES = [50, 100]
PROMPT = "warm analog brass"


def step(number: int, title: str) -> None:
    print(f"\n=== {number}. {title}", flush=True)


def fixture(out: str) -> dict[str, str]:
    """train (6 instruments, json/wav, bad records mixed in), valid and test (TFRecord, 2 unseen instruments each)."""
    instruments = default_instruments(10)
    splits = {"train": (instruments[:6], ("jsonwav",)), "valid": (instruments[6:8], ("tfrecord",)),
              "test": (instruments[8:], ("tfrecord",))}
    urls = {}
    for split, (members, formats) in splits.items():
        root = storage.join(out, "nsynth", split)
        urls[split] = write_fixture_nsynth(root, members, PITCHES, VELOCITIES, formats, with_bad_records=split == "train")[formats[0]]
        print(f"{split}: {len(members)} instruments x {len(PITCHES)} pitches x {len(VELOCITIES)} velocities -> {urls[split]}")
    return urls


def codec_round_trip(cfg, shards_url: str) -> None:
    codec = Codec.load(cfg.codec.weights, n_codebooks=cfg.codec.n_codebooks)
    table = shards.read_table(shards.shard_files(shards_url, "train")[0]).slice(0, 1).to_pydict()
    codes = torch.tensor(table["codes"][0]).reshape(1, table["n_codebooks"][0], table["n_frames"][0]).long()
    audio = codec.decode(codes)
    print(f"note {table['note_str'][0]}: codes {list(codes.shape)} -> decoded audio {list(audio.shape)} "
          f"at {codec.sample_rate_hz} Hz, peak {audio.abs().max():.3f}; CLAP embedding [{len(table['clap_embedding'][0])}]")


def show_training(cfg, out: str) -> None:
    """The loss table of the run and its plot (`<out>/figures/training_loss.png`)."""
    history = read_metrics(storage.join(cfg.train.storage_path, cfg.train.run_name, METRICS))
    print("step   train loss   valid loss   lr")
    for row in history:
        valid = f"{row['valid_loss']:10.4f}" if "valid_loss" in row else " " * 10
        print(f"{row['step']:4d}   {row['loss']:10.4f}   {valid}   {row['lr']:.2e}")
    figure = storage.join(out, "figures", "training_loss.png")
    storage.write_bytes(figure, loss_figure(history, f"tiny InstrumentLM, {cfg.train.num_workers} workers, "
                                                     f"{cfg.train.strategy} ZeRO-{cfg.train.zero_stage}"))
    print(f"loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}; plot: {figure}")


def generate(cfg, checkpoint: str, out: str) -> None:
    lm = InstrumentLM.load(checkpoint)
    codec, clap = Codec.load(cfg.codec.weights, n_codebooks=cfg.codec.n_codebooks), Clap.load(cfg.clap)
    instrument = generate_instrument(lm, codec, clap, InstrumentCue(prompt=PROMPT), cfg.generate,
                                     cfg.data.note_duration_s, progress=True)
    folder = storage.join(out, "instrument")
    manifest = instrument.write(folder)
    print(f"{PROMPT!r}: {len(manifest['notes'])} notes -> {folder}/ ({manifest['sfz']}, {manifest['dspreset']})")


def show_clap_codes(cfg, checkpoint: str) -> None:
    """The RVQ codes each test instrument's CLAP cue quantizes to: equal codes, equal generations."""
    from instrumentgen.evaluation import load_test_instruments

    lm, clap = InstrumentLM.load(checkpoint), Clap.load(cfg.clap)
    for instrument in load_test_instruments(cfg):
        reference = torch.from_numpy(instrument.audio)[instrument.reference_index()][None]
        _, codes, _ = lm.conditioners.clap.rvq(clap.embed_audio(reference, cfg.data.sample_rate_hz))
        print(f"{instrument.name}: CLAP cue -> RVQ codes {codes[0].tolist()}")
    print("(the tiny CLAP is random-init: it maps different instruments to nearly parallel embeddings, which can "
          "share RVQ codes; equal codes give equal generations and equal scores)")


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.demo [out]`: everything under `out` (default `demo-output/`)."""
    args = sys.argv[1:] if argv is None else argv
    out = os.path.abspath(args[0] if args else "demo-output")
    start = time.perf_counter()
    step(1, "fixture NSynth set")
    urls = fixture(out)
    shards_url = storage.join(out, "shards")
    overrides = [f"data.splits.{split}={url}" for split, url in urls.items()] + [f"data.shards={shards_url}"]
    cfg = load_config("tiny", overrides)

    if not ray.is_initialized():  # a test's Ray, or a fresh local one
        start_ray(quiet=True)
    step(2, "jobs.preprocess (Ray Data)")
    preprocess.run(cfg)

    step(3, "codec round trip of one note from the shards")
    codec_round_trip(cfg, shards_url)

    step(4, "jobs.train (Ray Train, DeepSpeed ZeRO-1 on 2 CPU workers)")
    cfg = load_config("tiny", [*overrides, f"train.storage_path={storage.join(out, 'runs')}", "train.run_name=demo"])
    checkpoint = train.run(cfg)
    show_training(cfg, out)

    step(5, f"generation: {PROMPT!r} -> 440 notes -> WAV + SFZ + DecentSampler")
    generate(cfg, checkpoint, out)

    step(6, "jobs.evaluate on the test instruments")
    test_cfg = load_config("tiny", [f"data.source={urls['test']}"])
    evaluate.run(test_cfg, checkpoint, storage.join(out, "eval"))
    show_clap_codes(test_cfg, checkpoint)

    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; outputs under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
