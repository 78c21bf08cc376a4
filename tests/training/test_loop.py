"""The training loop without Ray (`loop.train` on one worker, the real engine and checkpoint code):
validation under the conditions of use, and proof that the model learns its conditioning."""

import os
import shutil
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from instrumentgen.config import load_config
from instrumentgen.data import shards
from instrumentgen.data.synthetic import write_fixture_nsynth
from instrumentgen.model.conditioners import ClapConditioner
from instrumentgen.model.cues import Cues
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.training.checkpoint import MODEL, read_metrics
from instrumentgen.training.engines import make_engine
from instrumentgen.training.loop import train, validation_loss, window_means, without_metadata

PITCHES = [36, 43, 48, 55, 60, 67, 72, 79, 84]
VELOCITIES = [25, 75, 127]
FIGURE = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "figures", "conditioning_loss.png")


class TableShard:
    """A Ray Data shard's `iter_batches` over an in-memory table, shuffled like Ray's local buffer."""

    def __init__(self, columns: dict[str, np.ndarray]):
        self.columns = columns

    def iter_batches(
        self, *, batch_size, batch_format, drop_last=False, local_shuffle_buffer_size=None, local_shuffle_seed=None
    ):
        rows = len(next(iter(self.columns.values())))
        shuffled = local_shuffle_buffer_size is not None
        order = np.random.default_rng(local_shuffle_seed).permutation(rows) if shuffled else np.arange(rows)
        for start in range(0, rows - (batch_size - 1 if drop_last else 0), batch_size):
            index = order[start : start + batch_size]
            yield {name: column[index] for name, column in self.columns.items()}


class LocalSession:
    """Keeps reported metrics and copies each checkpoint folder to `<folder>/<name>`."""

    def __init__(self, folder):
        self.folder, self.metrics = folder, []

    def report(self, metrics, checkpoint_folder=None, checkpoint_name=None):
        self.metrics.append(metrics)
        if checkpoint_folder:
            shutil.copytree(checkpoint_folder, os.path.join(self.folder, checkpoint_name))

    @contextmanager
    def restored_checkpoint(self):
        yield None


def columns_of(table) -> dict[str, np.ndarray]:
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


@pytest.fixture(scope="module")
def notes(tmp_path_factory, ray_local, cache):
    """Every note of 4 fixture instruments x 9 pitches x 3 velocities, as preprocessed token shard rows."""
    from jobs import preprocess

    root = tmp_path_factory.mktemp("loop-data")
    source = write_fixture_nsynth(str(root / "nsynth"), 4, PITCHES, VELOCITIES, ("jsonwav",))["jsonwav"]
    out = str(root / "shards")
    preprocess.run(load_config("tiny", [f"data.source={source}", f"data.shards={out}"]))
    import pyarrow as pa

    table = pa.concat_tables([shards.read_table(f) for f in shards.shard_files(out, "train")])
    return columns_of(table.sort_by([("instrument", "ascending"), ("pitch", "ascending"), ("velocity", "ascending")]))


def select(columns, mask):
    return {name: column[mask] for name, column in columns.items()}


def test_validation_is_measured_without_family_and_source_in_the_clap_model(notes, tmp_path):
    cfg = load_config("tiny", [f"train.storage_path={tmp_path}", "train.strategy=ddp", "train.num_workers=1"])
    torch.manual_seed(0)
    engine = make_engine(InstrumentLM(cfg.model), cfg.train, 8, 0, 1, torch.device("cpu"))
    shard = TableShard(select(notes, notes["pitch"] < 60))
    metrics = validation_loss(engine, shard, 8)
    assert engine.module.training  # back to training mode
    codes, cues = shards.collate(next(shard.iter_batches(batch_size=1000, batch_format="numpy")))
    engine.module.eval()
    with torch.no_grad():
        as_used, with_metadata = engine.module(codes, without_metadata(cues)), engine.module(codes, cues)
    assert (cues.family >= 0).all() and (cues.source >= 0).all()
    assert metrics["valid_loss"] == pytest.approx(as_used.loss.item(), rel=1e-5)
    assert metrics["valid_loss_with_metadata"] == pytest.approx(with_metadata.loss.item(), rel=1e-5)
    assert metrics["valid_loss"] != pytest.approx(metrics["valid_loss_with_metadata"], rel=1e-4)
    assert [metrics[f"valid_ce_{k}"] for k in range(4)] == pytest.approx(as_used.ce_per_codebook.tolist(), rel=1e-5)

    metadata_cfg = load_config("tiny", ["model.conditioning=metadata", "train.strategy=ddp"])
    engine = make_engine(InstrumentLM(metadata_cfg.model), metadata_cfg.train, 8, 0, 1, torch.device("cpu"))
    metrics = validation_loss(engine, shard, 8)
    engine.module.eval()
    with torch.no_grad():
        expected = engine.module(codes, Cues(cues.family, cues.source, cues.pitch, cues.velocity)).loss.item()
    assert metrics["valid_loss"] == pytest.approx(expected, rel=1e-5) and "valid_loss_with_metadata" not in metrics


def test_window_means_reads_device_tensors_and_floats_and_skips_nan():
    window = {
        "loss": [torch.tensor(2.0), torch.tensor(4.0)],  # 0-d tensors as the loop keeps them
        "grad_norm": [float("nan"), torch.tensor(3.0), 5.0],  # NaN: a micro-step without an optimizer step
        "never": [float("nan")],
    }
    means = window_means(window)
    assert means["loss"] == 3.0 and means["grad_norm"] == 4.0
    assert np.isnan(means["never"]) and all(isinstance(v, float) for v in means.values())


def held_out_mask(notes):
    """One note in three per instrument, a different (pitch, velocity) set on each instrument: a held-out
    note's pitch and velocity are each trained on that instrument, and together on the others."""
    pitch, velocity = np.vectorize(PITCHES.index)(notes["pitch"]), np.vectorize(VELOCITIES.index)(notes["velocity"])
    return (pitch + notes["instrument"]) % 3 == velocity


def note_losses(lm, codes, cues, frames):
    """[B]: each note's teacher-forced CE of the first `frames` frames of every codebook."""
    logits = lm(codes, cues).logits  # [B, K, T, card]; codebook k's frame n is at step n + k
    steps = torch.stack([torch.arange(frames) + k for k in range(codes.shape[1])])  # [K, frames]
    picked = logits.gather(2, steps[None, :, :, None].expand(len(codes), -1, -1, logits.shape[-1]))
    losses = F.cross_entropy(picked.permute(0, 3, 1, 2), codes[:, :, :frames], reduction="none")  # [B, K, frames]
    return losses.mean(dim=(1, 2))


def onset_loss(lm, codes, cues, frames=2):
    """Teacher-forced CE of the first `frames` frames of every codebook: where the cue is all the model
    has (later, the note's own past codes tell pitch, loudness and instrument)."""
    return note_losses(lm, codes, cues, frames).mean().item()


# The stand-in CLAP: each fixture instrument a unit direction, its notes spread around it. Cosines
# chosen to look like a real CLAP's view of NSynth: two instruments' directions 0.5 apart (CLAP
# embeddings of music share a large common component), two notes of one instrument ~0.8.
BETWEEN, WITHIN = 0.5, 0.8


def stand_in_clap(instrument: np.ndarray, seed: int = 0) -> np.ndarray:
    """instrument [rows] (fixture instrument numbers) -> unit-norm [rows, 512] float16, as the shards store them."""
    generator = torch.Generator().manual_seed(seed)
    shared = F.normalize(torch.randn(512, generator=generator), dim=0)
    names = np.unique(instrument)
    own = F.normalize(torch.randn(len(names), 512, generator=generator), dim=-1)
    centres = BETWEEN**0.5 * shared + (1 - BETWEEN) ** 0.5 * own
    spread = F.normalize(torch.randn(len(instrument), 512, generator=generator), dim=-1)
    rows = torch.from_numpy(np.searchsorted(names, instrument))
    return F.normalize(WITHIN**0.5 * centres[rows] + (1 - WITHIN) ** 0.5 * spread, dim=-1).half().numpy()


@pytest.fixture(scope="module")
def cue_notes(notes):
    """The fixture notes with the stand-in CLAP embedding."""
    return {**notes, "clap_embedding": stand_in_clap(notes["instrument"])}


def cut_clap_token(module, inputs, output):
    """A forward hook on the CLAP conditioner: its token zeroed, as if the model had no CLAP cue."""
    tokens, loss, codes = output
    return torch.zeros_like(tokens), loss, codes


def cue_losses(lm, notes, held_out):
    """Onset loss of the held-out notes (family/source not given) under the right and the wrong cues."""
    codes, cues = shards.collate(notes)
    cues = without_metadata(cues)  # as the CLAP model is used: a prompt gives neither family nor source
    # Another instrument's CLAP embedding: its note of the same pitch and velocity (notes sorted by instrument).
    instruments = len(np.unique(notes["instrument"]))
    other_clap = cues.clap_embedding.view(instruments, -1, 512).roll(1, 0).reshape(-1, 512)
    far = {p: PITCHES[(PITCHES.index(p) + 4) % len(PITCHES)] for p in PITCHES}  # two octaves or more away
    louder_or_softer = {25: 127, 75: 25, 127: 25}
    variants = {
        "right cue": cues,
        "wrong pitch": Cues(
            cues.family,
            cues.source,
            torch.tensor([far[p] for p in cues.pitch.tolist()]),
            cues.velocity,
            cues.clap_embedding,
        ),
        "wrong velocity": Cues(
            cues.family,
            cues.source,
            cues.pitch,
            torch.tensor([louder_or_softer[v] for v in cues.velocity.tolist()]),
            cues.clap_embedding,
        ),
        "other instrument's CLAP": cues.with_clap(other_clap),
    }
    rows = torch.from_numpy(held_out)
    with torch.no_grad():
        losses = {name: onset_loss(lm, codes[rows], variant[rows]) for name, variant in variants.items()}
        hook = lm.conditioners.clap.register_forward_hook(cut_clap_token)
        try:
            losses["CLAP token zeroed"] = onset_loss(lm, codes[rows], cues[rows])
        finally:
            hook.remove()
    return losses


def train_tiny(notes, folder, run_name):
    """The tiny model after 200 steps of `loop.train` on `notes` (one worker, DDP engine, no Ray)."""
    cfg = load_config(
        "tiny",
        [
            f"train.storage_path={folder}",
            f"train.run_name={run_name}",
            "train.strategy=ddp",
            "train.num_workers=1",
            "train.max_steps=200",
            "train.checkpoint_every=200",
            "train.log_every=50",
            "train.warmup_steps=20",
        ],
    )
    session = LocalSession(str(folder / f"{run_name}-reported"))
    train(cfg, 0, 1, torch.device("cpu"), TableShard(notes), None, session)
    return InstrumentLM.load(str(folder / f"{run_name}-reported" / "checkpoint_000000200" / MODEL)), cfg


# Nats of onset loss that another instrument's CLAP embedding and a zeroed CLAP token each cost, on
# held-out notes and on training notes (measured after 200 steps: +0.023 / +0.026 held out, +0.11 /
# +0.10 on training notes; a model that cannot read the CLAP token gives exactly 0).
CLAP_MARGIN_HELD_OUT, CLAP_MARGIN_SEEN = 0.01, 0.05


def assert_reads_clap(held_out, seen):
    """Another instrument's CLAP embedding and a zeroed CLAP token each cost a margin, on held-out
    notes (`held_out`: `cue_losses`) and training notes (`seen`)."""
    for losses, margin in ((held_out, CLAP_MARGIN_HELD_OUT), (seen, CLAP_MARGIN_SEEN)):
        assert losses["other instrument's CLAP"] > losses["right cue"] + margin, losses
        assert losses["CLAP token zeroed"] > losses["right cue"] + margin, losses


# Frames of a generated note that `told_apart` scores: 16 of the tiny config's 44 (0.19 s), as a
# listener would judge a note from its attack. Measured after 200 steps on pairs (0, 2), (0, 1) and
# (1, 3): 80% / 89% / 94% of notes told apart from 4 frames, 87% / 96% / 98% from 8, 96% / 98% from 16.
TOLD_APART_FRAMES = 16


def told_apart(lm, notes, frames=TOLD_APART_FRAMES):
    """Share of the notes generated from each fixture instrument's cues (at every pitch and velocity
    of the fixture, family/source not given, the product's top-k 50 sampling) whose teacher-forced
    loss over their first `frames` frames is lower under their own CLAP embedding than under another
    instrument's (its note of the same pitch and velocity), over every pair of instruments."""
    codes, cues = shards.collate(notes)
    cues = without_metadata(cues)
    instruments = np.unique(notes["instrument"])
    rows = {i: torch.from_numpy(notes["instrument"] == i) for i in instruments}
    right = total = 0
    for own in instruments:
        mine = cues[rows[own]]
        generated = lm.generate(mine, frames, top_k=50, seeds=int(own))
        with torch.no_grad():
            loss_own = note_losses(lm, generated, mine, frames)
            for other in instruments[instruments != own]:
                loss_other = note_losses(lm, generated, mine.with_clap(cues[rows[other]].clap_embedding), frames)
                right += int((loss_own < loss_other).sum())
                total += len(mine)
    return right / total


@pytest.mark.slow
def test_the_trained_model_reads_pitch_velocity_and_the_clap_cue(cue_notes, tmp_path):
    notes, held_out = cue_notes, held_out_mask(cue_notes)
    lm, cfg = train_tiny(select(notes, ~held_out), tmp_path, "cues")
    history = read_metrics(str(tmp_path / "cues" / "metrics.csv"))
    assert {"rvq_perplexity_mean", "rvq_perplexity_min", "rvq_live_mean", "rvq_live_min"} <= set(history[-1])

    clap = torch.from_numpy(notes["clap_embedding"]).float().view(len(np.unique(notes["instrument"])), -1, 512)
    within = torch.stack([(i @ i.T)[~torch.eye(len(i), dtype=torch.bool)].mean() for i in clap])
    means = F.normalize(clap.mean(1), dim=-1)
    between = (means @ means.T)[~torch.eye(len(means), dtype=torch.bool)]
    print(
        f"stand-in CLAP cosine: within an instrument {within.mean():.2f}, between instrument means {between.mean():.2f}"
    )

    losses, seen = cue_losses(lm, notes, held_out), cue_losses(lm, notes, ~held_out)
    print("onset loss, held-out notes", losses, "seen notes", seen)
    if os.environ.get("INSTRUMENTGEN_WRITE_FIGURES"):
        from instrumentgen.metrics.plots import cue_loss_figure

        with open(FIGURE, "wb") as f:
            f.write(cue_loss_figure(losses, "tiny InstrumentLM, 200 steps: onset loss of held-out notes"))
    assert losses["wrong pitch"] > losses["right cue"] + 0.3, losses
    assert losses["wrong velocity"] > losses["right cue"] + 0.1, losses
    assert seen["wrong pitch"] > seen["right cue"] + 0.5, seen
    assert seen["wrong velocity"] > seen["right cue"] + 0.2, seen
    assert_reads_clap(losses, seen)

    # What a user sees: notes generated from one instrument's cues are told apart from another's by
    # the model's own loss under each cue (chance: 50%; a model blind to CLAP: 0%, the losses being
    # equal), every pair of the 4 instruments.
    separation = told_apart(lm, notes)
    print(f"generated notes told apart by their cue: {separation:.0%}")
    assert separation >= 0.9

    # The quantizer's first codebook gives every instrument its own entries and keeps many alive.
    rvq = lm.conditioners.clap.rvq
    codes = rvq.encode(clap.reshape(-1, 512)).view(len(clap), -1, len(rvq.codebooks))
    for a in range(len(codes)):
        for b in range(a + 1, len(codes)):
            assert (codes[a, :, 0] != codes[b, :, 0]).float().mean() > 0.9, (a, b)
    usage = rvq.code_usage(clap.reshape(-1, 512))
    print("code usage", usage)
    assert usage.live[0] >= 16 and usage.perplexity[0] >= 8, usage


@pytest.mark.slow
def test_the_clap_margin_fails_on_a_model_whose_clap_token_is_cut(cue_notes, tmp_path, monkeypatch):
    """The proof above can fail: trained and measured with its CLAP token zeroed in every forward, the
    same model does not pass `assert_reads_clap`."""
    notes, held_out = cue_notes, held_out_mask(cue_notes)
    original = ClapConditioner.forward
    monkeypatch.setattr(ClapConditioner, "forward", lambda *a, **k: cut_clap_token(None, None, original(*a, **k)))
    lm, _ = train_tiny(select(notes, ~held_out), tmp_path, "cut")
    losses, seen = cue_losses(lm, notes, held_out), cue_losses(lm, notes, ~held_out)
    print("onset loss of held-out notes, CLAP token cut", losses)
    with pytest.raises(AssertionError):
        assert_reads_clap(losses, seen)
    assert losses["other instrument's CLAP"] == losses["right cue"]  # nothing of the embedding gets through
    assert told_apart(lm, notes) == 0.0  # equal losses under every cue: no note is told apart
