import re

import pytest
import torch

from instrumentgen.config import load_config
from instrumentgen.model.conditioners import Conditioners
from instrumentgen.model.cues import NOT_GIVEN, Cues, make_cues
from instrumentgen.vocab import VocabError


def conditioners(*overrides):
    torch.manual_seed(0)
    return Conditioners(load_config("tiny", list(overrides)).model).eval()


def test_each_sample_drops_its_own_family_and_source_at_p_0_7():
    model = conditioners()
    batch = 20_000
    cues = make_cues([60] * batch, [100] * batch, family="brass", source="acoustic")
    torch.manual_seed(1)
    dropped = model.attribute_dropout(cues)
    family_gone, source_gone = dropped.family == NOT_GIVEN, dropped.source == NOT_GIVEN
    assert abs(family_gone.float().mean().item() - 0.7) < 0.015
    assert abs(source_gone.float().mean().item() - 0.7) < 0.015
    assert abs((family_gone & source_gone).float().mean().item() - 0.49) < 0.015  # independent coins
    # Per sample: any 16 consecutive samples (a per-worker batch) are not all dropped or all kept.
    windows = family_gone[: batch // 16 * 16].view(-1, 16).float().mean(dim=1)
    assert ((windows > 0) & (windows < 1)).float().mean() > 0.99
    assert torch.equal(dropped.pitch, cues.pitch) and torch.equal(dropped.velocity, cues.velocity)


def test_the_metadata_model_keeps_family_and_source():
    model = conditioners("model.conditioning=metadata")
    cues = make_cues([60] * 100, [100] * 100, family="brass", source="acoustic")
    assert torch.equal(model.attribute_dropout(cues).family, cues.family)


def test_the_null_condition_nulls_every_token_clap_included():
    model = conditioners()
    a = make_cues([30, 90], [25, 127], family="bass", source="synthetic", clap_embedding=torch.randn(512))
    b = make_cues([61, 62], [50, 75], family="flute", clap_embedding=torch.randn(512))
    null = torch.ones(2, dtype=torch.bool)
    tokens_a = model(a, null)[0]
    tokens_b = model(b, null)[0]
    assert tokens_a.shape == (2, 5, 64)
    assert torch.equal(tokens_a, tokens_b)  # nothing of the cue survives, the CLAP token neither
    assert torch.equal(tokens_a[:, 4], model.clap.null.expand(2, -1))
    tokens = model(a)[0]
    assert not torch.allclose(tokens[:, 4], tokens_a[:, 4])


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("pitch", 20, "pitch=20 is not allowed; allowed: MIDI 21..108"),
        ("velocity", 60, "velocity=60 is not allowed; allowed: 25, 50, 75, 100, 127"),
        ("family", 11, "family=11 is not allowed; allowed: -1 (not given) or 0..10 (bass, brass"),
    ],
)
def test_out_of_vocabulary_cues_name_the_value_and_the_allowed_ones(field, value, message):
    cues = make_cues([60, 61], [100, 100], family="bass")
    values = getattr(cues, field).clone()
    values[1] = value
    bad = Cues(**{**vars(cues), field: values})
    with pytest.raises(VocabError, match=re.escape(message)):
        conditioners()(bad)


def clustered_unit_embeddings(count, instruments=64, within=0.8, seed=0):
    """[count, 512] unit-norm notes around `instruments` random directions (cosine ~`within` in one)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(instruments, 512, generator=generator), dim=-1)
    which = torch.randint(0, instruments, (count,), generator=generator)
    spread = torch.nn.functional.normalize(torch.randn(count, 512, generator=generator), dim=-1)
    return torch.nn.functional.normalize(within**0.5 * centres[which] + (1 - within) ** 0.5 * spread, dim=-1)


def test_every_condition_token_has_the_scale_of_the_others_at_the_paper_shapes():
    """CLAP-like unit-norm embeddings through a k-means-initialised quantizer: at the paper's width the
    CLAP token's norm is within 2x of the lookup-table tokens' (~10x smaller without the sqrt(512) scale)."""
    torch.manual_seed(0)
    model = Conditioners(load_config("paper", ["model.rvq_codebooks=4", "model.rvq_kmeans_iters=5"]).model).eval()
    model.clap.rvq.initialize(clustered_unit_embeddings(2048))
    pitches, velocities = [21 + i for i in range(64)], [(25, 50, 75, 100, 127)[i % 5] for i in range(64)]
    cues = make_cues(pitches, velocities, "brass", "acoustic").with_clap(clustered_unit_embeddings(64, seed=1))
    tokens = model(cues)[0]  # [64, 5, 512]
    norms = dict(zip(("family", "source", "pitch", "velocity", "clap"), tokens.norm(dim=-1).mean(0).tolist()))
    unscaled = model.clap.proj(model.clap.rvq(cues.clap_embedding)[0]).norm(dim=-1).mean().item()
    print(
        "condition token norms (paper width, random init):",
        {name: round(norm, 2) for name, norm in norms.items()},
        f"CLAP token without the sqrt(512) scale: {unscaled:.2f}",
    )
    assert max(norms.values()) < 2 * min(norms.values()), norms
    assert unscaled < min(norms.values()) / 5  # what the scale fixes
