"""Where one instrument's time goes on this machine: prompt embedding, LM, codec decode, scoring, writing.

The same library calls as `generate_instrument` and the Serve/batch paths, timed one stage at a
time: CLAP text embedding of the prompt, `generate_codes` (KV cache, CFG, top-k), `Codec.decode`
in generation batches, scoring (TC of the whole instrument + MAD_pitch), `Instrument.write`
(24-bit WAVs, SFZ, DecentSampler preset, manifest) to a local folder. Full: the instrument the
demo and a local Serve make, the tiny config's random-init models, 88 keys x 5 velocities x its
0.5 s notes; `--quick`: 22 keys x 1 velocity. Rows give each stage against the whole instrument; `plot` draws the
stacked bar `docs/figures/instrument_time_breakdown.png`.
"""

from __future__ import annotations

import os
import tempfile

import torch

from jobs.benchmarks import private_weights_cache, row, timed

FIGURE = "instrument_time_breakdown.png"
PROMPT = "warm analog brass"


def _timed(stages: dict[str, float], name: str, fn):
    """fn() with its seconds recorded as stage `name`."""
    stages[name], result = timed(fn)
    return result


def stage_seconds(quick: bool) -> tuple[dict[str, float], str]:
    """{stage: seconds} for one instrument, and what the instrument was."""
    from instrumentgen.config import load_config
    from instrumentgen.instruments.generate import InstrumentCue, generate_codes, instrument_cues
    from instrumentgen.instruments.instrument import Instrument
    from instrumentgen.metrics.pitch import pitch_report
    from instrumentgen.metrics.tc import scales_from_config, tc
    from instrumentgen.model.lm import InstrumentLM
    from instrumentgen.pretrained.clap import Clap
    from instrumentgen.pretrained.codec import Codec
    from instrumentgen.vocab import PITCHES, VELOCITIES

    cfg = load_config("tiny")
    slots = [(p, 100) for p in PITCHES[::4]] if quick else [(p, v) for p in PITCHES for v in VELOCITIES]
    duration_s = cfg.data.note_duration_s
    torch.manual_seed(0)
    lm = InstrumentLM(cfg.model).eval()  # random init: the same compute as trained weights
    codec, clap = Codec.load(cfg.codec), Clap.load(cfg.clap)
    batch = cfg.generate.batch_size
    stages: dict[str, float] = {}
    embedding = _timed(stages, "CLAP text embedding", lambda: clap.embed_text([PROMPT])[0].cpu())
    cues = instrument_cues(InstrumentCue(prompt=PROMPT), embedding, slots)
    num_frames = codec.frames_for(duration_s)
    codec.decode(lm.generate(cues[:1], 4))  # warm-up (allocator, thread pool) outside the clock
    codes = _timed(stages, "LM generation", lambda: generate_codes(lm, cues, num_frames, cfg.generate))
    num_samples = round(duration_s * codec.sample_rate_hz)
    audio = _timed(
        stages,
        "codec decode",
        lambda: torch.cat(
            [codec.decode(codes[i : i + batch])[:, 0, :num_samples].cpu() for i in range(0, len(codes), batch)]
        ),
    )

    def score():
        tc(audio, codec.sample_rate_hz, scales_from_config(cfg.metrics), cfg.metrics.tc_power)
        pitch_report(audio, codec.sample_rate_hz, [p for p, _ in slots], cfg.metrics.pitch_estimator)

    _timed(stages, "scoring (TC + MAD_pitch)", score)
    instrument = Instrument(
        audio, [p for p, _ in slots], [v for _, v in slots], codec.sample_rate_hz, {"prompt": PROMPT}
    )
    with tempfile.TemporaryDirectory() as folder:
        _timed(stages, "writing (WAV, SFZ, preset)", lambda: instrument.write(os.path.join(folder, "instrument")))
    return stages, f"{len(slots)} notes x {duration_s:g} s, tiny models, batch {batch}"


def run(quick: bool) -> list[dict]:
    """One row per stage: the stage's seconds against the whole instrument's."""
    with private_weights_cache():
        stages, what = stage_seconds(quick)
    total_s = sum(stages.values())
    return [
        row(
            f"{stage}: one instrument ({what})",
            "whole instrument",
            stage,
            total_s,
            seconds,
            None,
            f"{seconds / total_s:.0%} of the instrument's {total_s:.2f} s",
        )
        for stage, seconds in stages.items()
    ]


def plot(rows: list[dict], out_dir: str) -> None:
    """`instrument_time_breakdown.png`: one stacked bar, a segment per stage, labelled with its share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    left = 0.0
    for measured, colour in zip(rows, plt.cm.tab10.colors):
        ax.barh(
            [0],
            [measured["ours_s"]],
            left=left,
            color=colour,
            label=f"{measured['ours']}: {measured['ours_s']:.2f} s ({measured['ours_s'] / measured['baseline_s']:.0%})",
        )
        left += measured["ours_s"]
    what = rows[0]["benchmark"].split(": ", 1)[1]
    ax.set(yticks=[], xlabel="seconds on this machine", title=f"Time by stage of {what}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(os.path.join(out_dir, FIGURE), dpi=120, bbox_inches="tight")
    plt.close(fig)
