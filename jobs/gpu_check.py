"""What a CPU cannot measure, on one GPU in a few minutes: paper-size generation, CFG, TC, DAC decoding.

    python -m jobs.gpu_check                      # on a machine with one CUDA GPU: rows into docs/benchmarks.md

Random-init models of the paper's sizes (speed does not depend on the weights): the 56M
InstrumentLM of `config=paper` and the 44.1 kHz DAC architecture (`dac.DAC()`), both on the GPU.

1. one 440-note instrument (88 keys x 5 velocities, 4 s, CFG 3, top-k 250) end to end:
   `generate_instrument` (LM in batches of `generate.batch_size`, DAC decode), seconds per instrument
2. batched CFG (one forward of the doubled batch) against two forwards, 88 notes x 348 steps
3. TC of the 440 notes (torch, on the GPU)
4. DAC decode throughput: 88 notes of 4 s per call, seconds of audio per second

Without a CUDA GPU it measures nothing and exits 2 with one line. The rows replace the block
between the `gpu_check` markers of docs/benchmarks.template.md, then docs/benchmarks.md is
rendered again (`python -m jobs.benchmark --render`). Until it has run, that block says so.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import torch

from instrumentgen.config import load_config
from instrumentgen.errors import UserError, exit_code
from instrumentgen.vocab import PITCHES, VELOCITIES

DOCS = Path(__file__).resolve().parents[1] / "docs"
TEMPLATE = DOCS / "benchmarks.template.md"
CPU_SIZES = {"notes": 8, "cfg_batch": 4}  # a CPU run of the same code (the tests), never written to docs
GPU_SIZES = {"notes": len(PITCHES) * len(VELOCITIES), "cfg_batch": 88}


class NoGPUError(UserError):
    """jobs.gpu_check was started where torch sees no CUDA device."""


def _seconds(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _models(device: str, config: str):
    import dac

    from instrumentgen.model.lm import InstrumentLM
    from instrumentgen.pretrained.codec import TINY_KWARGS, Codec

    torch.manual_seed(0)
    cfg = load_config(config)
    lm = InstrumentLM(cfg.model).to(device).eval()
    model = dac.DAC() if config == "paper" else dac.DAC(**TINY_KWARGS)
    return cfg, lm, Codec(model, cfg.codec.n_codebooks, f"dac-{config}-architecture-random", device)


def measure(device: str, config: str = "paper", sizes: dict | None = None) -> list[dict]:
    """The rows {measure, value, note} of the four measurements on `device` (config=tiny: the tests' CPU run)."""
    from instrumentgen.instruments.generate import InstrumentCue, generate_instrument
    from instrumentgen.metrics.tc import tc
    from instrumentgen.model.cues import make_cues

    sizes = sizes or GPU_SIZES
    cfg, lm, codec = _models(device, config)
    duration_s = cfg.data.note_duration_s
    frames = codec.frames_for(duration_s)
    slots = [(p, v) for p in PITCHES for v in VELOCITIES][: sizes["notes"]]
    cue = InstrumentCue(clap_embedding=torch.nn.functional.normalize(torch.randn(cfg.model.clap_dim), dim=0))
    generate_instrument(lm, codec, None, cue, cfg.generate, duration_s, slots=slots[:2])  # warm-up
    instrument = []
    instrument_s = _seconds(
        lambda: instrument.append(generate_instrument(lm, codec, None, cue, cfg.generate, duration_s, slots=slots)),
        device,
    )
    audio = instrument[0].audio
    batch = sizes["cfg_batch"]
    cues = make_cues(
        [PITCHES[i % len(PITCHES)] for i in range(batch)], [100] * batch, clap_embedding=cue.clap_embedding
    )
    two_s = _seconds(lambda: lm.generate(cues, frames, top_k=250, cfg_batched=False), device)
    batched_s = _seconds(lambda: lm.generate(cues, frames, top_k=250), device)
    tc_s = _seconds(lambda: tc(audio.to(device), instrument[0].sample_rate_hz), device)
    codes = torch.randint(0, codec.card, (batch, codec.n_codebooks, frames), device=device)
    decode_s = _seconds(lambda: codec.decode(codes), device)
    steps = frames + lm.cfg.n_q - 1
    name = f"{config} ({lm.num_parameters() / 1e6:.0f}M)"
    return [
        {
            "measure": f"one {len(slots)}-note instrument end to end, {name}",
            "value": f"{instrument_s:.1f} s",
            "note": f"{duration_s:g} s notes, CFG {cfg.generate.cfg_coef:g}, batch {cfg.generate.batch_size}",
        },
        {
            "measure": f"CFG: one forward of the doubled batch vs two forwards, {batch} notes x {steps} steps",
            "value": f"{two_s / batched_s:.2f}x",
            "note": f"{batched_s:.1f} s vs {two_s:.1f} s",
        },
        {"measure": f"TC of {len(slots)} notes", "value": f"{tc_s:.2f} s", "note": "torch, on the device"},
        {
            "measure": f"DAC decode, {batch} notes of {duration_s:g} s per call",
            "value": f"{batch * duration_s / decode_s:.0f} s of audio per s",
            "note": f"{decode_s:.2f} s per call",
        },
    ]


def table(rows: list[dict], machine: str) -> str:
    """The block for docs/benchmarks.template.md: command, machine, rows."""
    lines = ["```", "python -m jobs.gpu_check", "```", "", f"Machine: {machine}.", ""]
    lines += ["| measure | value | note |", "|---|---|---|"]
    lines += [f"| {r['measure']} | {r['value']} | {r['note']} |" for r in rows]
    return "\n".join(lines) + "\n"


def block_pattern(name: str) -> re.Pattern:
    """The block `<!-- name:start -->` ... `<!-- name:end -->` of the benchmarks template."""
    return re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)


def write_block(template: Path, name: str, block: str) -> None:
    """Replace the text between the `name` markers of `template` with `block` (gpu_check, paper_check)."""
    text = template.read_text()
    if not block_pattern(name).search(text):
        raise ValueError(f"{template} has no <!-- {name}:start --> ... <!-- {name}:end --> block")
    template.write_text(block_pattern(name).sub(lambda m: m[1] + block + m[2], text))


def main(argv: list[str] | None = None) -> int:
    """Measure on the GPU and write the rows; exit 2 with one line where there is no GPU."""

    def measure_and_write() -> None:
        if not torch.cuda.is_available():
            raise NoGPUError(
                f"jobs.gpu_check needs a CUDA GPU and torch sees none (torch {torch.__version__}, "
                f"CUDA {torch.version.cuda or 'none'}); nothing was measured, docs/benchmarks.md is unchanged"
            )
        from jobs.benchmark import describe_machine, this_machine
        from jobs.benchmark import main as benchmark_main

        rows = measure("cuda")
        write_block(TEMPLATE, "gpu_check", table(rows, describe_machine(this_machine())))
        benchmark_main(["--render"])

    return exit_code(measure_and_write)


if __name__ == "__main__":
    sys.exit(main())
