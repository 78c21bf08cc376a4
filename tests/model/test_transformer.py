import pytest
import torch

from instrumentgen.config import load_config
from instrumentgen.model.transformer import Transformer


def test_decoding_through_the_kv_cache_equals_the_full_causal_forward():
    torch.manual_seed(0)
    cfg = load_config("tiny").model
    transformer = Transformer(cfg).eval()
    x = torch.randn(3, 9, cfg.dim)  # [B, T, D]
    condition = torch.randn(3, 5, cfg.dim)  # [B, C, D]
    with torch.no_grad():
        full = transformer(x, condition)
        cache = transformer.new_cache(x.shape[1])
        steps = [transformer(x[:, t : t + 1], condition, cache) for t in range(x.shape[1])]
    assert full.shape == (3, 9, cfg.dim) and cache.length == 9
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one step at a time within 9 steps; got 1 steps at position 9"):
        transformer(x[:, :1], condition, cache)


def test_a_later_step_does_not_change_an_earlier_output():
    torch.manual_seed(1)
    cfg = load_config("tiny").model
    transformer = Transformer(cfg).eval()
    x, condition = torch.randn(2, 6, cfg.dim), torch.randn(2, 4, cfg.dim)
    changed = x.clone()
    changed[:, 4:] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(transformer(changed, condition)[:, :4], transformer(x, condition)[:, :4])
