import torch

from instrumentgen.model import patterns


def test_interleave_round_trips_random_codes():
    codes = torch.randint(0, 1024, (3, 4, 17))
    sequence = patterns.interleave(codes, special=1024)
    assert sequence.shape == (3, 4, 20)
    assert torch.equal(patterns.deinterleave(sequence), codes)


def test_codebook_k_is_delayed_by_k_steps_and_the_mask_marks_real_codes():
    codes = torch.arange(12).reshape(1, 4, 3)
    sequence = patterns.interleave(codes, special=99)[0]
    for k in range(4):
        assert sequence[k, k : k + 3].tolist() == codes[0, k].tolist()
    mask = patterns.valid_mask(4, 3)
    assert torch.equal(mask, sequence != 99)
    assert mask.sum().item() == 12
