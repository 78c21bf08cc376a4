import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from instrumentgen.config import load_config
from instrumentgen.model.cues import make_cues
from instrumentgen.model.lm import InstrumentLM, LMError, guided_logits


def tiny_lm(*overrides, seed=0):
    torch.manual_seed(seed)
    return InstrumentLM(load_config("tiny", list(overrides)).model).eval()


def cues_of(count, clap=True):
    torch.manual_seed(123)
    pitches, velocities = [21 + 7 * i for i in range(count)], [(25, 50, 75, 100, 127)[i % 5] for i in range(count)]
    return make_cues(pitches, velocities, family="brass", clap_embedding=torch.randn(512) if clap else None)


def test_parameter_counts_of_the_configs():
    # The paper's "60M": 56M parameters, + 6.3M EMA codebook buffers of the 12 x 1024 CLAP quantizer
    assert InstrumentLM(load_config("paper").model).num_parameters() == 55_967_232
    assert tiny_lm().num_parameters() < 1_000_000


def test_loss_is_the_mean_ce_over_codebooks_on_valid_positions_only():
    lm = tiny_lm()
    codes = torch.randint(0, 1024, (3, 4, 10))
    out = lm(codes, cues_of(3))
    assert out.logits.shape == (3, 4, 13, 1024) and out.ce_per_codebook.shape == (4,)
    torch.testing.assert_close(out.loss, out.ce_per_codebook.mean())  # the quantizer learns by EMA, not by loss
    assert out.rvq_loss > 0 and not out.rvq_loss.requires_grad
    assert out.clap_codes.shape == (3, 2)
    # Codebook 3 is valid at steps 3..12 only: its CE is the mean over those positions.
    log_probs = out.logits[:, 3, 3:].log_softmax(-1)
    expected = -log_probs.gather(-1, codes[:, 3, :, None]).mean()
    torch.testing.assert_close(out.ce_per_codebook[3], expected)


@pytest.mark.parametrize("top_k, temperature", [(1, 1.0), (50, 1.0), (0, 0.8)])
def test_generation_with_kv_cache_equals_generation_without_it(top_k, temperature):
    # float64: in float32 the two paths differ by ~1e-7, enough to flip a near-tie between two
    # tokens once in a few hundred draws; the paths compute the same function, which float64 shows.
    lm, cues = tiny_lm().double(), cues_of(5)
    cached = lm.generate(cues, 24, cfg_coef=3.0, top_k=top_k, temperature=temperature, seeds=7)
    uncached = lm.generate(cues, 24, cfg_coef=3.0, top_k=top_k, temperature=temperature, seeds=7, use_cache=False)
    assert cached.shape == (5, 4, 24) and cached.min() >= 0 and cached.max() < 1024
    assert torch.equal(cached, uncached)
    if top_k != 1:
        assert not torch.equal(cached, lm.generate(cues, 24, top_k=top_k, temperature=temperature, seeds=8))


def test_cfg_coef_1_is_the_conditional_model_alone():
    """Greedy generation at cfg_coef=1 is what the conditional model predicts under teacher forcing."""
    lm, cues = tiny_lm(), cues_of(4)
    codes = lm.generate(cues, 16, cfg_coef=1.0, top_k=1)
    predicted = lm(codes, cues).logits.argmax(-1)  # [B, K, T]
    for k in range(4):
        assert torch.equal(predicted[:, k, k : k + 16], codes[:, k])
    assert not torch.equal(codes, lm.generate(cues, 16, cfg_coef=3.0, top_k=1))


def test_batched_cfg_equals_two_forwards_and_the_guidance_formula():
    lm, cues = tiny_lm(), cues_of(3)
    batched = lm.generate(cues, 12, seeds=1, top_k=50)
    assert torch.equal(batched, lm.generate(cues, 12, seeds=1, top_k=50, cfg_batched=False))
    cond, uncond = torch.randn(2, 5), torch.randn(2, 5)
    torch.testing.assert_close(guided_logits(cond, uncond, 1.0), cond)
    torch.testing.assert_close(guided_logits(cond, uncond, 3.0), 3 * cond - 2 * uncond)


def test_a_note_samples_the_same_tokens_in_any_batch():
    lm, cues = tiny_lm(), cues_of(4)
    seeds = torch.tensor([11, 12, 13, 14])
    together = lm.generate(cues, 10, top_k=50, seeds=seeds)
    alone = torch.cat([lm.generate(cues[i : i + 1], 10, top_k=50, seeds=seeds[i : i + 1]) for i in range(4)])
    assert torch.equal(together, alone)


def test_memorises_cue_to_codes_pairs():
    """A few hundred steps on 4 pairs: greedy generation from each cue gives back its own codes,
    so the conditioning reaches the output (the pairs differ only in their cue)."""
    lm = tiny_lm("model.cfg_dropout=0.0", "model.family_dropout=0.0", "model.source_dropout=0.0", seed=1)
    torch.manual_seed(2)
    clap_embedding = F.normalize(torch.randn(512), dim=0)  # unit-norm, as CLAP's embeddings are
    cues = make_cues([40, 52, 64, 76], [25, 127, 75, 100], family="keyboard", clap_embedding=clap_embedding)
    codes = torch.randint(0, 1024, (4, 4, 8))
    optimizer = torch.optim.AdamW(lm.parameters(), lr=3e-3, weight_decay=0.0)
    lm.train()
    for _ in range(300):
        optimizer.zero_grad()
        loss = lm(codes, cues).loss
        loss.backward()
        optimizer.step()
    lm.eval()
    assert lm(codes, cues).ce_per_codebook.max() < 0.05
    assert torch.equal(lm.generate(cues, 8, cfg_coef=1.0, top_k=1), codes)
    # Swapping the cues swaps the outputs: the model reads the cue, not the batch position.
    assert torch.equal(lm.generate(cues[torch.tensor([2, 0])], 8, cfg_coef=1.0, top_k=1), codes[[2, 0]])


def test_save_and_load_through_fsspec_generate_the_same_tokens(tmp_path):
    lm, cues = tiny_lm(), cues_of(2)
    lm.save("memory://models/lm.pt")
    loaded = InstrumentLM.load("memory://models/lm.pt")
    assert loaded.model_id == lm.model_id
    assert torch.equal(loaded.generate(cues, 12, seeds=3, top_k=50), lm.generate(cues, 12, seeds=3, top_k=50))
    lm.save(str(tmp_path / "lm_bf16.pt"), dtype="bf16")
    half = InstrumentLM.load(str(tmp_path / "lm_bf16.pt"))
    assert next(half.parameters()).dtype == torch.float32
    torch.testing.assert_close(half.heads.weight, lm.heads.weight, atol=1e-2, rtol=1e-2)


def test_load_in_a_fresh_process_generates_the_same_tokens(tmp_path):
    lm, cues = tiny_lm(), cues_of(2)
    lm.save(str(tmp_path / "lm.pt"))
    torch.save(cues, tmp_path / "cues.pt")
    script = (
        "import sys, torch; from instrumentgen.model.lm import InstrumentLM; "
        "lm = InstrumentLM.load(sys.argv[1]); cues = torch.load(sys.argv[2], weights_only=False); "
        "torch.save(lm.generate(cues, 12, seeds=3, top_k=50), sys.argv[3])"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "lm.pt"), str(tmp_path / "cues.pt"), str(tmp_path / "codes.pt")],
        check=True,
    )
    assert torch.equal(torch.load(tmp_path / "codes.pt"), lm.generate(cues, 12, seeds=3, top_k=50))


def test_bad_requests_name_the_value_and_what_is_allowed(tmp_path):
    lm = tiny_lm()
    with pytest.raises(LMError, match=re.escape("num_frames=500 is not allowed; allowed: 1..128 (model.max_frames)")):
        lm.generate(cues_of(1), 500)
    with pytest.raises(LMError, match="does not exist"):
        InstrumentLM.load(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LMError, match="is not an InstrumentLM checkpoint"):
        InstrumentLM.load(str(tmp_path / "junk.pt"))
    with pytest.raises(LMError, match="model.dim=60 is not divisible by model.num_heads=16"):
        InstrumentLM(load_config("tiny", ["model.dim=60", "model.num_heads=16"]).model)


def test_model_id_is_kept_until_the_weights_can_change():
    lm = tiny_lm()
    first = lm.model_id
    assert lm.model_id is first  # cached: not hashed again
    other = tiny_lm(seed=1)
    lm.load_state_dict(other.state_dict())
    assert lm.model_id == other.model_id != first
    lm.train()
    lm(torch.randint(0, 1024, (2, 4, 8)), cues_of(2))  # a training forward moves the EMA codebooks
    lm.eval()
    assert lm.model_id != other.model_id


def test_generating_from_a_model_in_training_mode_changes_no_buffer_and_keeps_its_mode():
    lm = tiny_lm("model.dropout=0.5").train()
    lm.conditioners.clap.rvq.initialize(torch.nn.functional.normalize(torch.randn(256, 512), dim=-1))
    before = {name: b.clone() for name, b in lm.named_buffers()}
    model_id = lm.model_id
    cues = cues_of(3)
    codes = lm.generate(cues, 12, top_k=1, seeds=3)
    assert lm.training and all(m.training for m in lm.modules())
    for name, buffer in lm.named_buffers():
        assert torch.equal(before[name], buffer), name  # the quantizer's EMA statistics, `updates` included
    assert lm.model_id == model_id
    # As in eval mode: no dropout (0.5 here) in the sampled codes.
    assert torch.equal(codes, lm.eval().generate(cues, 12, top_k=1, seeds=3))
