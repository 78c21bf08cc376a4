"""Preprocessing throughput: the Ray Data job vs a serial Python loop over the same notes.

Both start from the same NSynth-format fixture (json/wav), load the tiny DAC and CLAP, and end
with Parquet token shards; the loop reads, validates, resamples and encodes one note at a time,
the job streams them through its stages with batched encoding in `data.encoder_actors` actors.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from instrumentgen import storage
from instrumentgen.audio import crop_and_resample
from instrumentgen.config import Config, load_config
from instrumentgen.data import nsynth, shards
from instrumentgen.data.shard_writer import STORED_COLUMNS
from instrumentgen.data.synthetic import write_fixture_nsynth
from instrumentgen.vocab import NSYNTH_SAMPLE_RATE_HZ, PITCHES
from jobs.benchmarks import row, timed
from jobs.entry import local_ray

ENCODER_ACTORS = 2  # one per core of the 2-core reference machine
ENCODER_NUM_CPUS = 0.75  # leaves a share of a core to the read tasks


def serial_loop(cfg: Config) -> int:
    """The obvious script: one note at a time through the same stages; one shard at the end."""
    from instrumentgen.pretrained.clap import Clap
    from instrumentgen.pretrained.codec import Codec

    codec, clap = Codec.load(cfg.codec), Clap.load(cfg.clap)
    columns = {name: [] for name in STORED_COLUMNS}
    for note in nsynth.iter_notes(cfg.data.source):
        audio = torch.from_numpy(
            crop_and_resample(
                note.audio[None], cfg.data.note_duration_s, NSYNTH_SAMPLE_RATE_HZ, cfg.data.sample_rate_hz
            )
        )
        with torch.inference_mode():
            codes = codec.encode(audio[:, None])[0, : cfg.codec.n_codebooks]
            clap_embedding = clap.embed_audio(audio, cfg.data.sample_rate_hz)[0]
        for name, value in (
            ("note_str", note.note_str),
            ("instrument_str", note.instrument_str),
            ("instrument", note.instrument),
            ("family", note.family),
            ("source", note.source),
            ("pitch", note.pitch),
            ("velocity", note.velocity),
        ):
            columns[name].append(value)
        columns["codes"].append(codes.numpy().astype(np.int16))
        columns["clap_embedding"].append(clap_embedding.numpy().astype(np.float16))
    table = shards.shard_table({name: np.stack(values) for name, values in columns.items()})
    shards.write_shard(storage.join(cfg.data.shards, "train", "serial.parquet"), table)
    return table.num_rows


def warm_up_serial_loop(cfg: Config) -> None:
    """Load the loop's models once, untimed: Python's one-time imports (laion_clap, transformers, dac:
    about 3 s) would otherwise fall on the small run's loop only and shrink its marginal cost."""
    from instrumentgen.pretrained.clap import Clap
    from instrumentgen.pretrained.codec import Codec

    Codec.load(cfg.codec), Clap.load(cfg.clap)


def _time_both(root: str, instruments: int, pitches: list[int], overrides: list[str]) -> tuple[int, float, float]:
    """(notes, serial seconds, Ray Data seconds) for a fixture of `instruments` x `pitches` x 2 velocities."""
    from jobs.preprocess import run as run_job

    source = write_fixture_nsynth(
        os.path.join(root, f"nsynth{instruments}"), instruments, pitches, [50, 100], formats=("jsonwav",)
    )["jsonwav"]
    n_notes = instruments * len(pitches) * 2
    overrides = [f"data.source={source}", f"data.notes_per_shard={max(8, n_notes // 16)}", *overrides]
    baseline_s, kept = timed(
        lambda: serial_loop(load_config("tiny", [*overrides, f"data.shards={root}/serial{instruments}"]))
    )
    ours_s, manifest = timed(lambda: run_job(load_config("tiny", [*overrides, f"data.shards={root}/ray{instruments}"])))
    assert kept == sum(manifest["kept"].values()) == n_notes
    return n_notes, baseline_s, ours_s


def run(quick: bool) -> list[dict]:
    """Two sizes, n and 2n notes: the end-to-end ratio at 2n (worker start-up and model loading
    included), and the steady-state ratio from the marginal cost of the second n notes."""
    instruments, pitches = (2, list(PITCHES[15:75:4])) if quick else (4, list(PITCHES[10:80:2]))
    overrides = [
        f"data.encoder_actors={ENCODER_ACTORS}",
        f"data.encoder_num_cpus={ENCODER_NUM_CPUS}",
        "data.encode_batch_size=16",
    ]
    warm_up_serial_loop(load_config("tiny"))
    with local_ray(), tempfile.TemporaryDirectory() as root:
        small = _time_both(root, instruments, pitches, overrides)
        large = _time_both(root, 2 * instruments, pitches, overrides)
    n_notes, baseline_s, ours_s = large
    extra = large[0] - small[0]
    marginal_baseline_s, marginal_ours_s = large[1] - small[1], large[2] - small[2]
    ours = f"jobs.preprocess (Ray Data, {ENCODER_ACTORS} encoder actors)"
    return [
        row(
            f"preprocess {n_notes} NSynth notes -> token shards, end to end (tiny DAC + CLAP, 0.5 s notes)",
            "serial Python loop, one note at a time",
            ours,
            baseline_s,
            ours_s,
            1.5,
            f"{n_notes / ours_s:.1f} vs {n_notes / baseline_s:.1f} notes/s, "
            f"model loading and worker start-up included; {os.cpu_count()} cores",
        ),
        row(
            f"preprocess, steady state: the extra {extra} notes of the {n_notes}-note run over the {small[0]}-note run",
            "serial Python loop",
            ours,
            marginal_baseline_s,
            marginal_ours_s,
            None,
            f"{extra / marginal_ours_s:.1f} vs {extra / marginal_baseline_s:.1f} notes/s",
        ),
    ]
