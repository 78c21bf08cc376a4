"""The stages of `jobs.preprocess` as plain functions and classes (the job wires them into Ray Data).

    plan_units        NSynth splits -> units: fixed blocks of input records, the unit of resume
    read_unit         a unit -> one row per record (reader + validator), then a closing `unit_end` row
    resample_and_crop 16 kHz notes -> `data.note_duration_s` at 44.1 kHz
    read_and_resample the two above in one task (the job's read stage)
    NoteEncoder       DAC codes [K, N] and CLAP audio embedding [512] per note (an actor: loads models once)

Every input record yields exactly one row, kept or not (`reason` says why not), so the writer
knows when a unit is complete and can report each rejection.

TFRecord is read here and not with `ray.data.read_tfrecords`: that reader imports TensorFlow,
which we do not install (`instrumentgen.data.tfrecord` parses `tf.train.Example` without it), and it
reads each file in one task, while NSynth's train split is one ~70 GB file. A unit of a TFRecord
file is a byte range; its records are those whose first byte lies in the range, found by
checking both CRCs from the range start, so units are read in parallel without an index.
"""

from __future__ import annotations

import glob
import hashlib
import json
from typing import Iterator

import numpy as np

from instrumentgen import storage
from instrumentgen.audio import crop_and_resample
from instrumentgen.config import Config, ConfigError, DataConfig, config_hash
from instrumentgen.data import nsynth, tfrecord
from instrumentgen.data.shard_writer import ENCODER_COLUMNS, UNIT_END, read_row, rows_to_batch
from instrumentgen.data.shards import HOLDOUT, SPLITS
from instrumentgen.vocab import NSYNTH_SAMPLE_RATE_HZ

TFRECORD_NOTE_BYTES = 256_600  # one NSynth Example: 64000 float32 samples, metadata, framing
READ_CHUNK = 16  # rows per block a read task yields: keeps blocks of 16 kHz audio small
SCAN_BYTES = 1 << 20


def split_sources(data: DataConfig) -> dict[str, str]:
    """{NSynth split: URL} from `data.splits`, with `data.source` as the train split."""
    sources = dict(data.splits)
    unknown = sorted(set(sources) - set(SPLITS))
    if unknown:
        raise ConfigError(f"data.splits.{unknown[0]} is not an NSynth split; allowed: {', '.join(SPLITS)}")
    if data.source:
        if sources.get("train", data.source) != data.source:
            raise ConfigError(
                f"data.source={data.source!r} and data.splits.train={sources['train']!r} differ; give one"
            )
        sources["train"] = data.source
    if not sources:
        raise ConfigError(
            "data.source is empty; give data.source=<url> (train) or data.splits.<train|valid|test>=<url>"
        )
    if not data.shards:
        raise ConfigError("data.shards is empty; give the output folder or URL, e.g. data.shards=s3://bucket/shards")
    return {split: sources[split] for split in SPLITS if split in sources}


def check_sources_exist(data: DataConfig, sources: dict[str, str]) -> None:
    """`ConfigError` naming the key of the first split whose data is not there (before any work starts)."""
    for split, url in sources.items():
        key = "data.source" if url == data.source else f"data.splits.{split}"
        try:
            fmt = nsynth.detect_format(url) if data.format == "auto" else data.format
            missing = (
                not storage.exists(storage.join(url, "examples.json"))
                if fmt == "jsonwav"
                else not any(storage.exists(f) for f in tfrecord_files(url))
            )
        except nsynth.NSynthError:  # auto: neither a TFRecord name nor a folder with examples.json
            missing = True
        if missing:
            raise ConfigError(
                f"{key}={url!r} does not exist; allowed: an NSynth split as a json/wav folder "
                "(with examples.json) or a TFRecord file, path or URL"
            )


def output_hash(cfg: Config, sources: dict[str, str]) -> str:
    """Hash of everything that decides the shards' content (not resources): resume only into equal output."""
    data, codec, clap = cfg.data, cfg.codec, cfg.clap
    return config_hash(
        {
            "sources": sources,
            "format": data.format,
            "note_duration_s": data.note_duration_s,
            "sample_rate_hz": data.sample_rate_hz,
            "holdout_instruments": data.holdout_instruments,
            "notes_per_shard": data.notes_per_shard,
            "codec": [codec.weights, codec.n_codebooks],
            "clap": [clap.weights, clap.amodel, clap.tmodel],
        }
    )


def held_out(instrument_str: str, fraction: float) -> bool:
    """Whether an instrument is in the held-out set: a hash of its name, so every worker agrees."""
    digest = hashlib.sha256(instrument_str.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def tfrecord_files(url: str) -> list[str]:
    """The TFRecord file(s) of a split: one URL, or a glob such as `.../nsynth-train.tfrecord-*`."""
    if not glob.has_magic(url):
        return [url]
    fs, path = storage.filesystem(url)
    protocol = url.split("://", 1)[0] + "://" if "://" in url else ""
    return [protocol + p for p in sorted(fs.glob(path))]


def plan_units(sources: dict[str, str], format: str, notes_per_shard: int) -> list[dict]:
    """Units of every split, numbered from 0 per split and deterministic for unchanged inputs:
    {source_split, unit, spec (json: the unit's metadata rows, or a TFRecord byte range)}."""
    units = []
    for split, url in sources.items():
        fmt = nsynth.detect_format(url) if format == "auto" else format
        if fmt == "jsonwav":
            rows = nsynth.read_examples_json(url)
            specs = [
                {"format": fmt, "rows": rows[i : i + notes_per_shard]} for i in range(0, len(rows), notes_per_shard)
            ]
        elif fmt == "tfrecord":
            unit_bytes, specs = notes_per_shard * TFRECORD_NOTE_BYTES, []
            for file_url in tfrecord_files(url):
                fs, path = storage.filesystem(file_url)
                size = fs.size(path)
                specs += [
                    {"format": fmt, "url": file_url, "start": start, "end": min(start + unit_bytes, size)}
                    for start in range(0, size, unit_bytes)
                ]
        else:
            raise ConfigError(f"data.format={format!r} is unknown; allowed: auto, {', '.join(nsynth.FORMATS)}")
        units += [{"source_split": split, "unit": i, "spec": json.dumps(spec)} for i, spec in enumerate(specs)]
    return units


def _is_record_start(f, offset: int) -> bool:
    f.seek(offset)
    try:
        next(tfrecord.iter_records(f))
    except (tfrecord.TFRecordError, StopIteration):
        return False
    return True


def _first_record_start(f, start: int, end: int) -> int | None:
    """Offset of the first record starting in [start, end) of an open TFRecord file, or None."""
    if start == 0:
        return 0
    pos = start
    while pos < end:
        f.seek(pos)
        window = np.frombuffer(f.read(SCAN_BYTES + 8), np.uint8)
        n = len(window) - 8
        if n <= 0:
            return None
        zero = window == 0
        # A record begins with its uint64 length; NSynth's are < 4 GiB, so its high 4 bytes are zero.
        candidates = np.flatnonzero(zero[4 : n + 4] & zero[5 : n + 5] & zero[6 : n + 6] & zero[7 : n + 7])
        for p in candidates:
            if pos + p >= end:
                return None
            if _is_record_start(f, pos + int(p)):
                return pos + int(p)
        pos += n
    return None


def iter_tfrecord_range(url: str, start: int, end: int) -> Iterator[bytes]:
    """Payloads of the records whose first byte lies in [start, end) of a TFRecord file."""
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        offset = _first_record_start(f, start, end)
        if offset is None:
            return
        f.seek(offset)
        records = tfrecord.iter_records(f)
        while f.tell() < end:
            data = next(records, None)
            if data is None:
                return
            yield data


def iter_unit_raw(spec: dict) -> Iterator[dict]:
    """Raw NSynth records of one unit, in input order."""
    if spec["format"] == "jsonwav":
        for row in spec["rows"]:
            yield nsynth.load_wav(row)
    else:
        for data in iter_tfrecord_range(spec["url"], spec["start"], spec["end"]):
            yield nsynth.example_to_raw(data)


def note_row(raw: dict, source_split: str, unit: int, position: int, holdout_fraction: float) -> dict:
    """A raw record -> one row of `shard_writer.READ_COLUMNS`: metadata, `split`, `reason`/`detail`
    ("" if kept) and `audio` (float32 [64000] at 16 kHz as bytes; empty if rejected)."""
    names = {"note_str": str(raw.get("note_str", "")), "instrument_str": str(raw.get("instrument_str", ""))}
    rejection = nsynth.validate(raw)
    if rejection is not None:
        return read_row(source_split, unit, position, **names, reason=rejection.reason, detail=rejection.detail)
    note = nsynth.to_note(raw)
    split = HOLDOUT if source_split == "train" and held_out(note.instrument_str, holdout_fraction) else source_split
    return read_row(
        source_split,
        unit,
        position,
        **names,
        split=split,
        instrument=note.instrument,
        family=note.family,
        source=note.source,
        pitch=note.pitch,
        velocity=note.velocity,
        audio=note.audio.tobytes(),
    )


def read_unit(batch: dict[str, np.ndarray], holdout_fraction: float) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data stage (batch of units -> note rows): read and validate every record of each unit,
    then close the unit with a `unit_end` row whose `position` is its record count."""
    for source_split, unit, spec in zip(batch["source_split"], batch["unit"], batch["spec"]):
        source_split, unit, rows, count = str(source_split), int(unit), [], 0
        for count, raw in enumerate(iter_unit_raw(json.loads(spec)), start=1):
            rows.append(note_row(raw, source_split, unit, count - 1, holdout_fraction))
            if len(rows) == READ_CHUNK:
                yield rows_to_batch(rows)
                rows = []
        yield rows_to_batch(rows + [read_row(source_split, unit, count, reason=UNIT_END)])


def resample_and_crop(batch: dict[str, np.ndarray], duration_s: float, sample_rate_hz: int) -> dict[str, np.ndarray]:
    """Ray Data stage: the `audio` bytes of kept rows -> `duration_s` at `sample_rate_hz` (float32 bytes)."""
    kept = np.flatnonzero(batch["reason"] == "")
    if len(kept):
        audio = np.stack([np.frombuffer(batch["audio"][i], np.float32) for i in kept])
        resampled = crop_and_resample(audio, duration_s, NSYNTH_SAMPLE_RATE_HZ, sample_rate_hz)
        batch["audio"] = batch["audio"].copy()
        for i, note_audio in zip(kept, resampled):
            batch["audio"][i] = note_audio.tobytes()
    return batch


def read_and_resample(
    batch: dict[str, np.ndarray], holdout_fraction: float, duration_s: float, sample_rate_hz: int
) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data stage (one unit -> note rows at the codec's rate): `read_unit`, then `resample_and_crop`
    on each chunk of rows, in the same task."""
    for rows in read_unit(batch, holdout_fraction):
        yield resample_and_crop(rows, duration_s, sample_rate_hz)


class NoteEncoder:
    """Ray Data actor stage: DAC codes and CLAP audio embeddings of the kept notes of a batch.

    In: a block of rows of one unit with `audio` (float32 bytes at the codec's rate), encoded in
    chunks of `data.encode_batch_size`. Out: the same rows without audio, plus
    `shard_writer.ENCODER_COLUMNS`: `codes` int16 [B, K, N], `clap_embedding` float16 [B, 512]
    (zeros for rejected rows and the unit_end row) and the model ids. Uses the GPU when the actor
    was given one (`data.encoder_num_gpus`).
    """

    def __init__(self, cfg: Config):
        from instrumentgen.pretrained.loading import device_for, load_models

        device = device_for(cfg.data.encoder_num_gpus, "data.encoder_num_gpus", cfg.codec.device)
        _, self.codec, self.clap = load_models(cfg, None, device)
        self.n_codebooks = cfg.codec.n_codebooks
        self.batch_size = cfg.data.encode_batch_size
        self.n_samples = round(cfg.data.note_duration_s * cfg.data.sample_rate_hz)
        self.n_frames = self.encode(np.zeros((1, self.n_samples), np.float32))[0].shape[-1]

    def encode(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 [B, L] at the codec's rate -> (codes int16 [B, K, N], clap_embedding float16 [B, 512])."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(audio)
            codes = self.codec.encode(x[:, None, :])[:, : self.n_codebooks]
            clap_embedding = self.clap.embed_audio(x, self.codec.sample_rate_hz)
        return codes.cpu().numpy().astype(np.int16), clap_embedding.float().cpu().numpy().astype(np.float16)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = len(batch["reason"])
        encoded = {column.name: column.empty(size, self.n_codebooks, self.n_frames) for column in ENCODER_COLUMNS}
        encoded.update(
            codec_model_id=np.full(size, self.codec.model_id), clap_model_id=np.full(size, self.clap.model_id)
        )
        kept = np.flatnonzero(batch["reason"] == "")
        # Chunks of the block's own rows, never rows of other units: a note's CLAP embedding moves
        # by a float16 step with the batch it is computed in, and shards must not depend on timing.
        for start in range(0, len(kept), self.batch_size):
            chunk = kept[start : start + self.batch_size]
            audio = np.stack([np.frombuffer(batch["audio"][i], np.float32) for i in chunk])
            encoded["codes"][chunk], encoded["clap_embedding"][chunk] = self.encode(audio)
        return {**{name: column for name, column in batch.items() if name != "audio"}, **encoded}
