import pytest
import torch

from instrumentgen.model.cues import NOT_GIVEN, instrument_grid, make_cues
from instrumentgen.vocab import FAMILIES, SOURCES, VocabError


def test_make_cues_shares_one_timbre_across_the_notes():
    embedding = torch.arange(512, dtype=torch.float64)
    cues = make_cues([21, 60, 108], [25, 100, 127], "brass", "acoustic", embedding)
    assert len(cues) == 3
    assert (
        cues.family.tolist() == [FAMILIES.index("brass")] * 3
        and cues.source.tolist() == [SOURCES.index("acoustic")] * 3
    )
    assert cues.pitch.tolist() == [21, 60, 108] and cues.velocity.tolist() == [25, 100, 127]
    assert cues.clap_embedding.shape == (3, 512) and cues.clap_embedding.dtype == torch.float32
    assert torch.equal(cues.clap_embedding[2], embedding.float())


def test_absent_attributes_are_not_given_and_slicing_keeps_every_field():
    cues = make_cues([40, 41, 42, 43], [50, 50, 75, 75])
    assert cues.family.tolist() == [NOT_GIVEN] * 4 and cues.source.tolist() == [NOT_GIVEN] * 4
    assert cues.clap_embedding is None
    part = cues.with_clap(torch.ones(4, 512))[1:3]
    assert (
        part.pitch.tolist() == [41, 42] and part.velocity.tolist() == [50, 75] and part.clap_embedding.shape == (2, 512)
    )
    assert cues.clap_embedding is None  # with_clap returns a new batch


@pytest.mark.parametrize(
    "pitches, velocities, message",
    [
        ([20], [50], "pitch"),
        ([60], [51], "velocity"),
        ([60, 61], [50], "differ in length; allowed: one velocity per pitch"),
    ],
)
def test_bad_notes_name_the_value(pitches, velocities, message):
    with pytest.raises(VocabError, match=message):
        make_cues(pitches, velocities)


def test_the_instrument_grid_is_pitch_major_88_keys_by_5_velocities():
    pitches, velocities = instrument_grid()
    assert len(pitches) == 440 and pitches[:6] == [21] * 5 + [22] and velocities[:6] == [25, 50, 75, 100, 127, 25]
    assert len(set(zip(pitches, velocities))) == 440
