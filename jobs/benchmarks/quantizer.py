"""The CLAP quantizer at the paper's shapes: does it stay put? (issue 22; docs/training.md).

A pure-torch simulation of what training does to `ResidualVectorQuantizer` (12 codebooks x 1024
entries, 512-d, a global batch of 32 rows a step) on synthetic embeddings that look like CLAP's
view of NSynth: more instruments than entries (2048), each a unit direction with a shared
component (cosine ~0.5 between instruments), its notes spread around it (cosine ~0.8 to each
other), every row unit-norm, a fresh stream of notes each step. Three quantizers see the same
stream:

- before: the quantizer as it was (`quantizer_baseline.py`: plain Lloyd, dead entries re-seeded
  from rows drawn with replacement) with audiocraft's settings (k-means on the first 32-row batch,
  EMA decay 0.99 and dead-code threshold 2 assignments per step), expressed in the quantizer's units (decay per
  `bins` rows 0.99 ** 32, threshold 2 x 1024 / 32 = 64 even shares);
- after: the config's defaults (k-means over a sample of the training set, `model.rvq_init_samples`
  rows, small clusters split off large ones, 10 Lloyd iterations here for time (50 in training);
  codebook decay 0.99999 per `bins` rows; re-seeded below 1/20 of an even share of usage counted
  with decay 0.999 per `bins` rows);
- the same initialisation with the codebooks' decay at 0.999 (the previous default), whose probe-code
  churn is in the note of the churn row: why the codebooks move slowly.

Reported, after a warm-up: entries re-seeded per step, distinct entries per codebook (level 0
and the minimum), the codes of 1024 fixed probe embeddings that change per 1000 steps, the
held-out relative quantization error ||x - q(x)||^2 / ||x||^2 against the same k-means fit
frozen, and the perplexity of each codebook on held-out notes. The `_s` columns hold these
figures, not seconds, each one better lower; `ratio` is before / after (above 1: better), a 0 shown
at the measurement's resolution.
"""

from __future__ import annotations

import copy
import time

import torch

from instrumentgen.config import ModelConfig
from instrumentgen.model.quantizer import ResidualVectorQuantizer
from jobs.benchmarks import row
from jobs.benchmarks.quantizer_baseline import AudiocraftQuantizer

DIM = 512
FASTER_DECAY = 0.999  # the codebooks' decay before they were made slow: shown beside, in the churn row's note


class InstrumentLikeEmbeddings:
    """Unit-norm [n, 512] notes of `instruments` clustered directions (module docstring)."""

    def __init__(self, instruments: int, seed: int = 0, between: float = 0.5, within: float = 0.8):
        self.generator = torch.Generator().manual_seed(seed)
        shared = torch.nn.functional.normalize(torch.randn(DIM, generator=self.generator), dim=0)
        own = torch.nn.functional.normalize(torch.randn(instruments, DIM, generator=self.generator), dim=-1)
        # cos(a, b) = between for two centres a = sqrt(between) shared + sqrt(1 - between) own_a
        self.centres = between**0.5 * shared + (1 - between) ** 0.5 * own
        self.within = within

    def draw(self, n: int) -> torch.Tensor:
        """[n, 512]: notes of random instruments; two notes of one instrument have cosine ~`within`."""
        which = torch.randint(0, len(self.centres), (n,), generator=self.generator)
        spread = torch.nn.functional.normalize(torch.randn(n, DIM, generator=self.generator), dim=-1)
        return torch.nn.functional.normalize(
            self.within**0.5 * self.centres[which] + (1 - self.within) ** 0.5 * spread, dim=-1
        )


def relative_error(rvq: ResidualVectorQuantizer, x: torch.Tensor) -> float:
    """Mean ||x - q(x)||^2 / ||x||^2 of the eval-mode quantizer."""
    quantized = rvq.eval()(x)[0]
    return ((x - quantized).pow(2).sum(-1) / x.pow(2).sum(-1)).mean().item()


def simulate(
    rvq: ResidualVectorQuantizer,
    data: InstrumentLikeEmbeddings,
    steps: int,
    warmup: int,
    batch: int,
    probes: torch.Tensor,
    held_out: torch.Tensor,
) -> dict:
    """Train `rvq` on `steps` batches of the stream; its figures after `warmup` steps."""
    reseeds, churn, codes, start = [], [], None, time.perf_counter()
    for step in range(1, steps + 1):
        rvq.train()(data.draw(batch))
        if step > warmup:
            reseeds.append(rvq.reseeds.float() / rvq.bins)
        if step >= warmup and (step - warmup) % 1000 == 0:
            now = rvq.encode(probes)
            if codes is not None:
                churn.append((now != codes).float().mean(0))  # [Q] per 1000 steps
            codes = now
    distinct = torch.tensor([float(len(torch.unique(c, dim=0))) / rvq.bins for c in rvq.codebooks])
    usage = rvq.code_usage(held_out)
    return {
        "reseeds": torch.stack(reseeds).mean(0),  # [Q] share of entries per step
        "distinct": distinct,  # [Q]
        "churn": torch.stack(churn).mean(0),  # [Q] per 1000 steps
        "error": relative_error(rvq, held_out),
        "perplexity": usage.perplexity,
        "seconds": time.perf_counter() - start,
    }


def _row(name: str, before: float, after: float, floor: float, goal: float | None, note: str) -> dict:
    """A row whose figure is better lower; a 0 is shown at the measurement's resolution `floor`."""
    shown = max(after, floor)
    return row(
        name,
        "before: first-batch k-means, decay 0.99 / step, threshold 2 / step",
        "after: split k-means over the sample, decay 0.99999 / 1024 rows, dead below 0.05 share of usage",
        before,
        shown,
        None if goal is None else f"≤ {goal:g} {'✔' if after <= goal else '✘'}",
        note + (f" (0 measured: shown at the resolution {floor:.2g})" if after < floor else ""),
    )


def rows(
    before: dict,
    after: dict,
    faster: dict,
    reference: float,
    shape: str,
    bins: int,
    probes: int,
    measured_steps: int,
) -> list[dict]:
    """The table from the runs' figures (`simulate`: before, after, after with decay 0.999) and the
    k-means reference error."""
    per_codebook = lambda figures: "/".join(f"{v:.3g}" for v in figures)  # noqa: E731
    return [
        _row(
            f"share of entries re-seeded per step after warm-up, max over codebooks ({shape})",
            max(before["reseeds"]),
            max(after["reseeds"]),
            1 / (bins * measured_steps),
            0.01,
            f"per codebook after: {per_codebook(after['reseeds'])}",
        ),
        _row(
            "share of entries that duplicate another, max over codebooks",
            1 - min(before["distinct"]),
            1 - min(after["distinct"]),
            1 / bins,
            0.1,
            f"distinct entries per codebook before {per_codebook(before['distinct'])}; "
            f"after {per_codebook(after['distinct'])}",
        ),
        _row(
            "probe codes changed per 1000 steps after warm-up, max over codebooks",
            max(before["churn"]),
            max(after["churn"]),
            1 / probes,
            0.02,
            f"{probes} probes; per codebook before {per_codebook(before['churn'])}; "
            f"after {per_codebook(after['churn'])}; after with codebook decay {FASTER_DECAY} "
            f"{per_codebook(faster['churn'])} (held-out error {faster['error'] / reference:.3g}x k-means)",
        ),
        _row(
            "held-out relative quantization error / k-means on the sample",
            before["error"] / reference,
            after["error"] / reference,
            0.0,
            1.1,
            f"k-means on the sample, frozen: {reference:.4f}; before {before['error']:.4f}, after {after['error']:.4f}",
        ),
        _row(
            "bins / perplexity on held-out notes (1 = even use), max over codebooks",
            bins / min(before["perplexity"]),
            bins / min(after["perplexity"]),
            0.0,
            None,
            f"perplexity per codebook (of {bins}) before {per_codebook(before['perplexity'])}; "
            f"after {per_codebook(after['perplexity'])}",
        ),
    ]


def run(quick: bool) -> list[dict]:
    """Full: 12 x 1024, 4000 steps of 32 rows after a warm-up of 1000 (before: 1500 after 500: it is
    steady from its first steps, and each of its steps re-seeds every entry, the slow part);
    quick: 2 x 1024, 2000 steps after 1000 for both."""
    cfg = ModelConfig()
    codebooks, steps, warmup = (2, 2000, 1000) if quick else (cfg.rvq_codebooks, 4000, 1000)
    before_steps, before_warmup = (2000, 1000) if quick else (1500, 500)
    batch, bins, sample_rows, iters = 32, cfg.rvq_bins, cfg.rvq_init_samples, 10
    data = InstrumentLikeEmbeddings(2 * bins)
    sample, probes, held_out = data.draw(sample_rows), data.draw(1024), data.draw(4096)

    torch.manual_seed(0)
    after = ResidualVectorQuantizer(DIM, codebooks, bins, cfg.rvq_decay, iters, cfg.rvq_dead_code_threshold)
    start = time.perf_counter()
    after.initialize(sample)
    reference = relative_error(after, held_out)  # the k-means fit on the sample, frozen
    print(
        f"k-means of {sample_rows} rows: {time.perf_counter() - start:.0f} s, held-out error {reference:.4f}",
        flush=True,
    )
    before = AudiocraftQuantizer(DIM, codebooks, bins, 0.99 ** (bins / batch), iters, 2 * bins / batch)
    faster = copy.deepcopy(after)
    faster.decay = FASTER_DECAY
    results = {}
    runs = (
        ("before", before, before_steps, before_warmup),
        ("after", after, steps, warmup),
        ("faster", faster, steps, warmup),
    )
    for name, rvq, count, settle in runs:
        figures = simulate(rvq, data, count, settle, batch, probes, held_out)
        results[name] = {k: v if isinstance(v, float) else v.tolist() for k, v in figures.items()}
        print(name, results[name], flush=True)
    shape = f"{codebooks} x {bins}, batch {batch}, {before_steps} / {steps} steps, sample {sample_rows}"
    figures = results["before"], results["after"], results["faster"]
    return rows(*figures, reference, shape, bins, len(probes), steps - warmup)
