"""NSynth's vocabulary: instrument families and sources with NSynth's ids, the 88 keys, 5 velocities."""

from __future__ import annotations

from instrumentgen.errors import UserError

FAMILIES = (
    "bass",
    "brass",
    "flute",
    "guitar",
    "keyboard",
    "mallet",
    "organ",
    "reed",
    "string",
    "synth_lead",
    "vocal",
)  # index == NSynth `instrument_family`
SOURCES = ("acoustic", "electronic", "synthetic")  # index == NSynth `instrument_source`
PITCH_MIN, PITCH_MAX = 21, 108  # MIDI A0..C8, the 88 keys of a piano
PITCHES = tuple(range(PITCH_MIN, PITCH_MAX + 1))
VELOCITIES = (25, 50, 75, 100, 127)  # the velocity layers present in NSynth
NSYNTH_SAMPLE_RATE_HZ = 16_000
NSYNTH_NUM_SAMPLES = 64_000  # 4 s


def midi_to_hz(pitch: float) -> float:
    """MIDI note number -> frequency in Hz (A4 = 69 = 440 Hz, equal temperament)."""
    return 440.0 * 2.0 ** ((pitch - 69) / 12)


class VocabError(UserError):
    """A family, source, pitch or velocity outside NSynth's vocabulary."""


def family_id(family: str | int) -> int:
    """Family name or NSynth id -> id; raises `VocabError` naming the allowed values."""
    return _lookup("family", family, FAMILIES)


def source_id(source: str | int) -> int:
    """An NSynth source name or id -> its id; `VocabError` naming the allowed ones."""
    return _lookup("source", source, SOURCES)


def check_pitch(pitch: int) -> int:
    """`pitch` if it is one of the 88 keys (MIDI 21..108); else `VocabError`."""
    if not isinstance(pitch, int) or isinstance(pitch, bool) or not PITCH_MIN <= pitch <= PITCH_MAX:
        raise VocabError(f"pitch={pitch!r} is outside the 88 keys; allowed: MIDI {PITCH_MIN}..{PITCH_MAX}")
    return pitch


def check_velocity(velocity: int) -> int:
    """`velocity` if it is one of NSynth's five layers; else `VocabError`."""
    if velocity not in VELOCITIES or isinstance(velocity, bool):
        raise VocabError(f"velocity={velocity!r} is not a velocity layer; allowed: {', '.join(map(str, VELOCITIES))}")
    return int(velocity)


def _lookup(field_name: str, value: str | int, names: tuple[str, ...]) -> int:
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return value
    allowed = ", ".join(f"{i}={n}" for i, n in enumerate(names))
    raise VocabError(f"{field_name}={value!r} is unknown; allowed: {allowed}")
