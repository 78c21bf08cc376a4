import pytest
import torch

from instrumentgen.instruments.selection import SelectionError, candidate_seeds, select_candidates


def test_candidate_seeds_start_with_the_instrument_seed_and_differ():
    seeds = candidate_seeds(7, 4)
    assert seeds[0] == 7 and len(set(seeds)) == 4
    assert candidate_seeds(7, 4) == seeds and candidate_seeds(8, 4)[1:] != seeds[1:]
    assert candidate_seeds(7, 1) == [7]
    with pytest.raises(SelectionError, match="candidates=0 is not allowed; allowed: 1 or more"):
        candidate_seeds(7, 0)


def test_selection_keeps_the_candidates_near_the_instruments_median():
    torch.manual_seed(0)
    slots, dim = 12, 8
    timbre = torch.randn(dim)
    features = timbre + 0.05 * torch.randn(3, slots, dim)  # [C, S, F]: all near one timbre...
    outliers = torch.tensor([0, 1, 2] * 4)  # ...except one candidate per slot, far off
    features[outliers, torch.arange(slots)] += 5.0
    chosen = select_candidates(features)
    assert chosen.shape == (slots,) and chosen.dtype == torch.long
    assert not (chosen == outliers).any()
    kept = features[chosen, torch.arange(slots)]
    assert (kept - timbre).abs().max() < 0.5


def test_one_candidate_is_kept_as_is_and_bad_shapes_are_named():
    assert select_candidates(torch.randn(1, 5, 3)).tolist() == [0] * 5
    with pytest.raises(SelectionError, match=r"features of shape \(5, 3\); allowed: \[C, S, F\]"):
        select_candidates(torch.randn(5, 3))
