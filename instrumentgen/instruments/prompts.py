"""Prompt lists for batch rendering: a JSONL or CSV file (by extension) -> validated render requests.

One line asks for one instrument (or `variations` of it). Fields:

    prompt            text cue ("warm analog brass")                     } one of these three cues;
    reference_audio   URL or path of a recording (CLAP audio cue)        } family/source may also
    family, source    NSynth metadata cue (names or ids)                 } accompany a prompt
    name              display name (default: the prompt, or the cue)
    seed              instrument seed, >= 0 (default: generate.seed of the config)
    variations        n instruments from this line, seeds seed, seed + 1, ... (1..render.max_variations)
    keys              [low, high] MIDI range, 21..108 (default: all 88 keys); CSV: "60-72"
    velocities        subset of 25, 50, 75, 100, 127 (default: all 5); CSV: "50 100"
    candidates        k >= 1 candidates per note for consistency selection (1..render.max_candidates)

A line that cannot be used becomes a `PromptFailure` with its 1-based line number, a reason code
and a message naming the field and what is allowed; the other lines go on. Blank lines are skipped.
A file that cannot be used at all is one `PromptError`: missing, unknown extension, no line, or a
CSV whose first row is not a header of known columns (a CSV without a header would lose its first
prompt as the header).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass

from instrumentgen import storage
from instrumentgen.errors import UserError
from instrumentgen.vocab import FAMILIES, PITCH_MAX, PITCH_MIN, SOURCES, VELOCITIES, VocabError, family_id, source_id

FIELDS = (
    "prompt",
    "family",
    "source",
    "reference_audio",
    "name",
    "seed",
    "variations",
    "keys",
    "velocities",
    "candidates",
)
MAX_SEED = 2**32 - 1  # the range of derived seeds (mix_seed); hashed as int64, so far from overflow


class PromptError(UserError):
    """A prompt file that cannot be read at all (missing, unknown extension); single lines fail as `PromptFailure`."""


class _LineError(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RenderRequest:
    """One instrument to render (after `expand_variations`: `variations` == 1 and `seed` its own)."""

    line: int
    name: str
    seed: int
    prompt: str | None = None
    family: str | None = None
    source: str | None = None
    reference_audio: str | None = None
    variations: int = 1
    variation: int = 0
    keys: tuple[int, int] = (PITCH_MIN, PITCH_MAX)
    velocities: tuple[int, ...] = VELOCITIES
    candidates: int = 1

    def slots(self) -> list[tuple[int, int]]:
        """The (pitch, velocity) slots of the instrument, pitch-major."""
        return [(p, v) for p in range(self.keys[0], self.keys[1] + 1) for v in self.velocities]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RenderRequest":
        data = json.loads(text)
        return cls(**{**data, "keys": tuple(data["keys"]), "velocities": tuple(data["velocities"])})


@dataclass(frozen=True)
class PromptFailure:
    """A prompt line (or one of its instruments) that was not rendered: where, why (a code) and the message."""

    line: int
    reason: str
    message: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _int(data: dict, key: str, low: int, high: int, default: int) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _LineError("bad_value", f"{key}={value!r} is not a whole number; allowed: {low}..{high}")
    if not low <= value <= high:
        raise _LineError("out_of_range", f"{key}={value} is out of range; allowed: {low}..{high}")
    return value


def _keys(value) -> tuple[int, int]:
    allowed = f"[low, high] with MIDI {PITCH_MIN} <= low <= high <= {PITCH_MAX}"
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(k, int) and not isinstance(k, bool) for k in value)
    ):
        raise _LineError("bad_value", f"keys={value!r} is not allowed; allowed: {allowed}")
    low, high = value
    if not PITCH_MIN <= low <= high <= PITCH_MAX:
        raise _LineError("out_of_range", f"keys={list(value)} is out of range; allowed: {allowed}")
    return low, high


def _velocities(value) -> tuple[int, ...]:
    allowed = f"a non-empty subset of {', '.join(map(str, VELOCITIES))}"
    if not isinstance(value, (list, tuple)) or not value or len(set(value)) != len(value):
        raise _LineError("bad_value", f"velocities={value!r} is not allowed; allowed: {allowed}")
    if any(v not in VELOCITIES or isinstance(v, bool) for v in value):
        raise _LineError("out_of_range", f"velocities={list(value)} is not allowed; allowed: {allowed}")
    return tuple(sorted(value))


def _text(data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise _LineError("bad_value", f"{key}={value!r} is not text; allowed: a string")
    return value


def parse_request(data: dict, line: int, default_seed: int, max_variations: int, max_candidates: int) -> RenderRequest:
    """One line's fields -> `RenderRequest`; raises `_LineError` (reason, message) for the first problem found."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise _LineError("unknown_field", f"unknown field {unknown[0]!r}; allowed: {', '.join(FIELDS)}")
    prompt, reference = _text(data, "prompt"), _text(data, "reference_audio")
    family, source = data.get("family"), data.get("source")
    if prompt is None and reference is None and family is None and source is None:
        raise _LineError("missing_cue", "no cue; allowed: prompt, reference_audio, or family/source")
    if prompt is not None and reference is not None:
        raise _LineError("bad_value", "prompt and reference_audio both given; allowed: one of them")
    if prompt is not None and not prompt.strip():
        raise _LineError("empty_prompt", "prompt is empty; allowed: a description such as 'warm analog brass'")
    try:
        family = None if family is None else FAMILIES[family_id(family)]
        source = None if source is None else SOURCES[source_id(source)]
    except VocabError as e:
        raise _LineError("bad_value", str(e)) from None
    if reference is not None:
        try:
            reachable = storage.exists(reference)
        except Exception as e:  # any fsspec backend error (no credentials, bad endpoint) means unreachable
            raise _LineError(
                "unreachable_reference", f"reference_audio={reference!r} cannot be reached ({type(e).__name__})"
            ) from None
        if not reachable:
            raise _LineError("unreachable_reference", f"reference_audio={reference!r} does not exist")
    name = _text(data, "name")
    if name is not None and not name.strip():
        raise _LineError("bad_value", "name is empty; allowed: a non-empty name, or leave it out")
    default_name = prompt or (
        reference.rstrip("/").rsplit("/", 1)[-1] if reference else " ".join(v for v in (source, family) if v)
    )
    seed, variations = _int(data, "seed", 0, MAX_SEED, default_seed), _int(data, "variations", 1, max_variations, 1)
    if seed + variations - 1 > MAX_SEED:
        raise _LineError(
            "out_of_range",
            f"seed={seed} with variations={variations} passes {MAX_SEED}; allowed: seed + variations - 1 <= {MAX_SEED}",
        )
    return RenderRequest(
        line=line,
        name=(name or default_name).strip(),
        seed=seed,
        prompt=prompt.strip() if prompt else None,
        family=family,
        source=source,
        reference_audio=reference,
        variations=variations,
        keys=_keys(data["keys"]) if "keys" in data else (PITCH_MIN, PITCH_MAX),
        velocities=_velocities(data["velocities"]) if "velocities" in data else VELOCITIES,
        candidates=_int(data, "candidates", 1, max_candidates, 1),
    )


def _csv_fields(row: dict) -> dict:
    """CSV cells (text) -> the JSONL field types; empty cells are not given."""
    data = {}
    for key, cell in row.items():
        if key is None:
            raise _LineError("bad_value", f"more cells than the {len(row) - 1} columns of the header")
        cell = (cell or "").strip()
        if not cell:
            continue
        if key in ("seed", "variations", "candidates"):
            data[key] = int(cell) if cell.lstrip("-").isdigit() else cell
        elif key == "keys":
            parts = cell.replace(" ", "").split("-")
            data[key] = [int(p) if p.isdigit() else p for p in parts]
        elif key == "velocities":
            parts = cell.replace(",", " ").replace(";", " ").split()
            data[key] = [int(p) if p.isdigit() else p for p in parts]
        elif key in ("family", "source") and cell.isdigit():
            data[key] = int(cell)
        else:
            data[key] = cell
    return data


def _lines(text: str, fmt: str):
    """(line number, fields or a _LineError) for each non-blank line."""
    if fmt == "jsonl":
        for number, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as e:
                yield number, _LineError("bad_json", f"not valid JSON ({e.msg} at column {e.colno})")
                continue
            yield number, data if isinstance(data, dict) else _LineError("bad_json", "a line must be a JSON object")
        return
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    unknown = [name for name in header if name not in FIELDS]
    if unknown:
        if len(unknown) == len(header):
            raise PromptError(
                f"the first row of the CSV ({','.join(header)[:80]!r}) is not a header; expected a header row "
                f"naming its columns, from: {', '.join(FIELDS)} (e.g. 'prompt,seed')"
            )
        raise PromptError(f"CSV header column {unknown[0]!r} is unknown; allowed: {', '.join(FIELDS)}")
    reader.fieldnames = header
    for row in reader:
        if not any((cell or "").strip() for key, cell in row.items() if key is not None):
            continue
        try:
            yield reader.line_num, _csv_fields(row)
        except _LineError as e:
            yield reader.line_num, e


def prompt_format(url: str) -> str:
    """ "jsonl" or "csv", from the file's extension; `PromptError` for any other."""
    fmt = url.rsplit(".", 1)[-1].lower()
    if fmt not in ("jsonl", "csv"):
        raise PromptError(f"prompts={url!r} has an unknown extension; allowed: .jsonl or .csv")
    return fmt


def read_prompts(
    url: str, default_seed: int = 0, max_variations: int = 16, max_candidates: int = 8
) -> tuple[list[RenderRequest], list[PromptFailure]]:
    """A JSONL or CSV prompt file (path or fsspec URL) -> (requests in file order, failures by line)."""
    fmt = prompt_format(url)
    if not storage.exists(url):
        raise PromptError(f"prompts={url!r} does not exist; allowed: a .jsonl or .csv file (path or URL)")
    try:
        text = storage.read_bytes(url).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PromptError(f"prompts={url!r} is not UTF-8 text ({e.reason}); allowed: a .jsonl or .csv file") from None
    if not text.strip():
        raise PromptError(f"prompts={url!r} is empty; allowed: a file with one prompt per line")
    requests, failures = [], []
    for number, data in _lines(text, fmt):
        try:
            if isinstance(data, _LineError):
                raise data
            requests.append(parse_request(data, number, default_seed, max_variations, max_candidates))
        except _LineError as e:
            failures.append(PromptFailure(number, e.reason, str(e)))
    return requests, failures


def expand_variations(request: RenderRequest) -> list[RenderRequest]:
    """A line of n variations -> n requests with seeds seed, seed + 1, ..., seed + n - 1."""
    return [
        dataclasses.replace(request, seed=request.seed + i, variations=1, variation=i)
        for i in range(request.variations)
    ]


def normalised_cue(request: RenderRequest) -> dict:
    """What makes the timbre, normalised: case and spacing of a prompt do not change it."""
    prompt = " ".join(request.prompt.lower().split()) if request.prompt else None
    return {
        "prompt": prompt,
        "family": request.family,
        "source": request.source,
        "reference_audio": request.reference_audio,
        "keys": list(request.keys),
        "velocities": list(request.velocities),
        "candidates": request.candidates,
    }


def instrument_id(request: RenderRequest, checkpoint_id: str, settings: dict) -> str:
    """16 hex digits of sha256 over (normalised cue, seed, checkpoint id, generation settings); never raw text."""
    key = {"cue": normalised_cue(request), "seed": request.seed, "checkpoint": checkpoint_id, "settings": settings}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
