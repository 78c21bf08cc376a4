import pytest

from instrumentgen.model.cues import instrument_grid, make_cues
from instrumentgen.vocab import VocabError, family_id, source_id


def test_vocabulary_matches_nsynth_ids():
    assert family_id("bass") == 0 and family_id("vocal") == 10 and family_id(3) == 3
    assert source_id("synthetic") == 2


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: make_cues([20], [100]), r"pitch=20 is outside the 88 keys; allowed: MIDI 21..108"),
        (lambda: make_cues([60], [60]), r"velocity=60 is not a velocity layer; allowed: 25, 50, 75, 100, 127"),
        (lambda: make_cues([60], [100], family="kazoo"), r"family='kazoo' is unknown; allowed: 0=bass, 1=brass"),
        (lambda: make_cues([60], [100], source=7), r"source=7 is unknown; allowed: 0=acoustic"),
    ],
)
def test_bad_cues_name_the_value_and_the_allowed_ones(call, message):
    with pytest.raises(VocabError, match=message):
        call()


def test_instrument_grid_and_cues():
    pitches, velocities = instrument_grid()
    assert len(pitches) == 440 and len(set(zip(pitches, velocities))) == 440
    cues = make_cues(pitches, velocities, family="brass")
    assert cues.family.unique().tolist() == [1] and cues.source.unique().tolist() == [-1]
    assert cues.pitch.min() == 21 and cues.pitch.max() == 108 and cues.clap_embedding is None
