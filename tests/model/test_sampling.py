import torch

from instrumentgen.model import sampling


def test_top_k_draws_follow_the_truncated_softmax():
    """With evenly spaced uniforms, token counts equal the top-k probabilities to within one draw."""
    logits = torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(0))
    draws = 20_000
    u = ((torch.arange(draws) + 0.5) / draws).double()[:, None]
    tokens = sampling.sample_top_k(logits.expand(draws, 1, 64), u, top_k=10, temperature=0.7)
    counts = torch.bincount(tokens.flatten(), minlength=64).double() / draws
    top = logits[0, 0].topk(10)
    expected = torch.zeros(64, dtype=torch.double)
    expected[top.indices] = torch.softmax(top.values.double() / 0.7, dim=-1)
    torch.testing.assert_close(counts, expected, atol=1.5 / draws, rtol=0)


def test_greedy_and_seeded_streams():
    logits = torch.randn(3, 4, 32)
    assert torch.equal(sampling.sample_top_k(logits, torch.rand(3, 4).double(), 1, 1.0), logits.argmax(-1))
    seeds = torch.tensor([1, 2, 3])
    table = sampling.uniforms(seeds, 6, 4)
    assert table.shape == (3, 6, 4) and torch.equal(table, sampling.uniforms(seeds, 6, 4))
    assert torch.equal(sampling.uniforms(seeds[1:], 6, 4), table[1:])  # a note's stream is its own
    assert torch.equal(sampling.uniforms(seeds, 9, 4)[:, :6], table)  # and does not depend on the length
    u = sampling.uniforms(torch.arange(5000), 1, 4)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
    assert len(table.unique()) == table.numel()
