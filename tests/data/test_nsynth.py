from collections import Counter

import numpy as np
import pytest

from instrumentgen.data import nsynth
from instrumentgen.data.synthetic import bad_records, midi_to_hz, write_fixture_nsynth, written_fixture
from instrumentgen.vocab import NSYNTH_SAMPLE_RATE_HZ

PITCHES, VELOCITIES = [40, 69], [50, 127]


@pytest.fixture(scope="module")
def local_fixture(tmp_path_factory):
    return write_fixture_nsynth(str(tmp_path_factory.mktemp("nsynth")), 2, PITCHES, VELOCITIES, with_bad_records=True)


def _notes(url):
    skipped = Counter()
    return list(nsynth.iter_notes(url, skipped=skipped)), skipped


def test_both_formats_read_the_same_good_records(local_fixture):
    (json_notes, json_skipped), (tf_notes, tf_skipped) = (
        _notes(local_fixture["jsonwav"]),
        _notes(local_fixture["tfrecord"]),
    )
    assert len(json_notes) == len(tf_notes) == 2 * 2 * 2
    assert sorted(n.note_str for n in json_notes) == sorted(n.note_str for n in tf_notes)
    by_name = {n.note_str: n for n in tf_notes}
    for n in json_notes:
        other = by_name[n.note_str]
        assert (n.pitch, n.velocity, n.family, n.source, n.instrument) == (
            other.pitch,
            other.velocity,
            other.family,
            other.source,
            other.instrument,
        )
        np.testing.assert_allclose(n.audio, other.audio, atol=1 / 32768)  # 16-bit wav vs float
    expected = Counter(reason for *_, reason in bad_records())
    assert json_skipped == expected
    assert tf_skipped == expected - Counter(["unreadable_audio"]) + Counter(["wrong_length"])


def test_fixture_notes_are_pitched_and_louder_with_velocity(local_fixture):
    notes = {(n.instrument_str, n.pitch, n.velocity): n.audio for n in _notes(local_fixture["jsonwav"])[0]}
    audio = notes[("bass_acoustic_000", 69, 127)]
    spectrum = np.abs(np.fft.rfft(audio[:16000] * np.hanning(16000)))
    peak_hz = np.argmax(spectrum) * NSYNTH_SAMPLE_RATE_HZ / 16000
    assert abs(peak_hz - midi_to_hz(69)) < 2  # strongest partial at the labelled f0 (440 Hz)
    quiet = notes[("bass_acoustic_000", 69, 50)]
    assert np.abs(audio).max() > 2 * np.abs(quiet).max()


def test_reading_from_s3_equals_local(local_fixture, s3_bucket, tmp_path):
    urls = write_fixture_nsynth(s3_bucket, 2, PITCHES, VELOCITIES, with_bad_records=True)
    for fmt in ("jsonwav", "tfrecord"):
        s3_notes, s3_skipped = _notes(urls[fmt])
        local_notes, local_skipped = _notes(local_fixture[fmt])
        assert [n.note_str for n in s3_notes] == [n.note_str for n in local_notes]
        assert s3_skipped == local_skipped
        np.testing.assert_array_equal(s3_notes[0].audio, local_notes[0].audio)


def test_validator_names_each_reason():
    good = {
        "note_str": "x",
        "instrument": 1,
        "instrument_str": "x",
        "pitch": 60,
        "velocity": 100,
        "instrument_family": 1,
        "instrument_source": 0,
        "sample_rate": 16000,
        "audio": np.zeros(64000, np.float32),
    }
    assert nsynth.validate(good) is None
    cases = {
        "missing_field": {k: v for k, v in good.items() if k != "pitch"},
        "unreadable_audio": {**good, "audio_error": "LibsndfileError: bad header"},
        "wrong_sample_rate": {**good, "sample_rate": 22050},
        "wrong_length": {**good, "audio": np.zeros(100, np.float32)},
        "non_finite_audio": {**good, "audio": np.full(64000, np.nan, np.float32)},
        "unknown_family": {**good, "instrument_family": 11},
        "unknown_source": {**good, "instrument_source": 3},
        "pitch_out_of_range": {**good, "pitch": 12},
        "bad_velocity": {**good, "velocity": 60},
    }
    for reason, raw in cases.items():
        assert nsynth.validate(raw).reason == reason
    assert nsynth.validate(cases["pitch_out_of_range"]).detail == "pitch=12, allowed 21..108"


def test_unknown_layout_is_a_clear_error(tmp_path):
    with pytest.raises(nsynth.NSynthError, match="neither a TFRecord file"):
        nsynth.detect_format(str(tmp_path))
    with pytest.raises(nsynth.NSynthError, match="data.format='mp3' is unknown"):
        list(nsynth.iter_raw(str(tmp_path), "mp3"))


def test_a_fixture_counts_as_written_only_once_its_last_file_is(tmp_path):
    root = str(tmp_path / "split")
    assert written_fixture(root, "jsonwav") is None and written_fixture(root, "tfrecord") is None
    urls = write_fixture_nsynth(root, 1, [60], [100])
    assert {fmt: written_fixture(root, fmt) for fmt in urls} == urls
    (tmp_path / "split" / "jsonwav" / "examples.json").unlink()  # as if interrupted before its last file
    assert written_fixture(root, "jsonwav") is None and written_fixture(root, "tfrecord") == urls["tfrecord"]
