import json

import numpy as np
import pytest
import torch

from instrumentgen import storage
from instrumentgen.data import shard_writer, shards
from instrumentgen.data.shard_writer import ShardWriter
from instrumentgen.data.shards import ShardError, collate, shard_table
from instrumentgen.faults import Fault, InjectedFault
from jobs.shard_dataset import read_shards

K, N = 4, 6


def encoded_rows(source_split, unit, positions, reasons=None, split=None, unit_size=None):
    """Encoder-stage output rows of one unit, as Ray Data hands them to the writer ([B] columns)."""
    reasons = reasons or [""] * len(positions)
    rows = []
    for position, reason in zip(positions, reasons):
        kept = reason == ""
        rows.append(
            {
                "source_split": source_split,
                "unit": unit,
                "position": position,
                "split": split or source_split,
                "note_str": f"{source_split}-{unit}-{position}",
                "instrument_str": "bass_acoustic_000",
                "instrument": 3 if kept else -1,
                "family": 0 if kept else -1,
                "source": 0 if kept else -1,
                "pitch": 40 + position if kept else -1,
                "velocity": 100 if kept else -1,
                "reason": reason,
                "detail": "" if kept else f"why {position}",
                "codes": np.full((K, N), 7 * unit + position if kept else 0, np.int16),
                "clap_embedding": np.full(512, position / 10 if kept else 0, np.float16),
                "codec_model_id": "dac-test",
                "clap_model_id": "clap-test",
            }
        )
    if unit_size is not None:
        end = {
            **rows[0],
            "position": unit_size,
            "reason": shard_writer.UNIT_END,
            "detail": "",
            "codes": np.zeros((K, N), np.int16),
            "clap_embedding": np.zeros(512, np.float16),
        }
        rows.append(end)
    return rows


def to_batch(rows):
    return {name: np.stack([r[name] for r in rows]) for name in rows[0]}


def test_shard_table_round_trips_through_parquet_and_collate(tmp_path):
    rows = to_batch(encoded_rows("train", 2, [0, 1, 2]))
    url = str(tmp_path / "train" / "part.parquet")
    shards.write_shard(url, shard_table(rows))
    table = shards.read_table(url)
    assert table.num_rows == 3
    assert table.schema.field("codes").type.list_size == K * N
    assert str(table.schema.field("clap_embedding").type.value_type) == "halffloat"

    # Ray Data hands list columns over as object arrays of [W] arrays; plain [B, W] arrays work too.
    as_ray = {
        name: np.array(list(table.column(name).to_numpy(zero_copy_only=False)) + [None], dtype=object)[:-1]
        if name in ("codes", "clap_embedding")
        else table.column(name).to_numpy()
        for name in table.column_names
    }
    codes, cues = collate(as_ray)
    assert codes.shape == (3, K, N) and codes.dtype == torch.long
    assert torch.equal(codes, torch.from_numpy(rows["codes"].astype(np.int64)))
    assert cues.pitch.tolist() == [40, 41, 42] and cues.velocity.tolist() == [100] * 3
    assert cues.family.dtype == torch.long and cues.clap_embedding.shape == (3, 512)
    assert cues.clap_embedding[2, 0].item() == pytest.approx(0.2, abs=1e-3)
    stacked = {**as_ray, "codes": np.stack(as_ray["codes"]), "clap_embedding": np.stack(as_ray["clap_embedding"])}
    assert torch.equal(collate(stacked)[0], codes)


def test_collate_rejects_mixed_code_shapes():
    batch = to_batch(encoded_rows("train", 0, [0, 1]))
    table = shard_table(batch).to_pydict()
    table = {
        k: np.array(v, dtype=object) if k in ("codes", "clap_embedding") else np.array(v) for k, v in table.items()
    }
    table["n_frames"] = np.array([N, N + 1])
    with pytest.raises(ShardError, match=r"n_frames \[6, 7\]"):
        collate(table)


def read_marker(url, key):
    return storage.read_json(storage.join(url, shards.PROGRESS, key + ".json"))


def test_writer_commits_a_unit_only_when_all_its_rows_arrived(tmp_path):
    url = str(tmp_path / "out")
    writer = ShardWriter(url, "hash1", {"train": "/data"})
    unit0 = encoded_rows("train", 0, [0, 1, 2, 3], ["", "pitch_out_of_range", "", ""], unit_size=4)
    unit0[3]["split"] = shards.HOLDOUT
    unit1 = encoded_rows("train", 1, [0, 1], ["", ""], unit_size=2)
    # Out of order and interleaved, as Ray Data may deliver them.
    assert writer.add(to_batch([unit0[2], unit1[1], unit0[4]])) == []
    assert writer.add(to_batch([unit0[0], unit1[2]])) == []
    assert not storage.exists(storage.join(url, shards.PROGRESS))
    assert writer.add(to_batch([unit0[3], unit0[1], unit1[0]])) == [("train", 0), ("train", 1)]

    train = shards.read_table(storage.join(url, "train", "train-00000.parquet")).to_pydict()
    assert train["note_str"] == ["train-0-0", "train-0-2"]  # sorted by input position, rejected left out
    holdout = shards.read_table(storage.join(url, "holdout", "train-00000.parquet")).to_pydict()
    assert holdout["note_str"] == ["train-0-3"]
    marker = read_marker(url, "train-00000")
    assert marker["kept"] == {"holdout": 1, "train": 2} and marker["records"] == 4
    assert marker["skipped"] == {"pitch_out_of_range": 1}
    assert marker["rejected"] == [
        {"split": "train", "note_str": "train-0-1", "reason": "pitch_out_of_range", "detail": "why 1"}
    ]
    assert writer.completed_units() == {("train", 0), ("train", 1)}

    manifest = writer.finish([("train", 0), ("train", 1)], {"note_duration_s": 0.5})
    assert manifest == storage.read_json(storage.join(url, "manifest.json"))
    assert manifest["kept"] == {"holdout": 1, "train": 4} and manifest["skipped"] == {"pitch_out_of_range": 1}
    assert manifest["files"] == {
        "holdout": ["holdout/train-00000.parquet"],
        "train": ["train/train-00000.parquet", "train/train-00001.parquet"],
    }
    assert (manifest["n_codebooks"], manifest["n_frames"], manifest["codec_model_id"]) == (K, N, "dac-test")
    assert manifest["records"] == 6 and manifest["note_duration_s"] == 0.5
    rejected = [
        json.loads(line) for line in storage.read_bytes(storage.join(url, shards.REJECTED)).decode().splitlines()
    ]
    assert [r["reason"] for r in rejected] == ["pitch_out_of_range"]
    assert shards.shard_files(url, "train") == [storage.join(url, "train", f"train-0000{i}.parquet") for i in (0, 1)]


def test_a_crash_before_the_marker_leaves_the_unit_incomplete(tmp_path):
    url = str(tmp_path / "out")
    fault = Fault("preprocess.unit", at=1, marker=str(tmp_path / "fired"), action="raise")
    writer = ShardWriter(url, "hash1", {"train": "/data"}, fault)
    writer.add(to_batch(encoded_rows("train", 0, [0], unit_size=1)))
    with pytest.raises(InjectedFault, match=r"injected failure at preprocess.unit=1"):
        writer.add(to_batch(encoded_rows("train", 1, [0, 1], unit_size=2)))
    assert storage.exists(storage.join(url, "train", "train-00001.parquet"))  # the file is whole ...
    assert writer.completed_units() == {("train", 0)}  # ... but the unit does not count
    with pytest.raises(ShardError, match="unit train-00001 .* is not complete; re-run"):
        writer.finish([("train", 0), ("train", 1)], {})
    with pytest.raises(ShardError, match="no manifest.json"):
        shards.read_manifest(url)


def test_writer_refuses_output_made_with_other_settings(tmp_path):
    url = str(tmp_path / "out")
    ShardWriter(url, "hash1", {}).add(to_batch(encoded_rows("train", 0, [0], unit_size=1)))
    with pytest.raises(ShardError, match="config hash hash1, this run has hash2"):
        ShardWriter(url, "hash2", {}).completed_units()


def test_unknown_split_names_the_available_ones(tmp_path):
    url = str(tmp_path / "out")
    writer = ShardWriter(url, "h", {})
    writer.add(to_batch(encoded_rows("valid", 0, [0], unit_size=1)))
    writer.finish([("valid", 0)], {})
    with pytest.raises(ShardError, match="split='train' has no notes .*; allowed: valid"):
        shards.shard_files(url, "train")


def test_read_shards_gives_a_dataset_that_collates(tmp_path, ray_local):
    url = str(tmp_path / "out")
    writer = ShardWriter(url, "h", {})
    for unit in range(2):
        writer.add(to_batch(encoded_rows("train", unit, [0, 1, 2], unit_size=3)))
    writer.finish([("train", 0), ("train", 1)], {})
    ds = read_shards(url, "train")
    assert ds.count() == 6
    batches = [collate(b) for b in ds.iter_batches(batch_size=4, batch_format="numpy")]
    assert sum(len(codes) for codes, _ in batches) == 6
    codes, cues = batches[0]
    assert codes.shape[1:] == (K, N) and cues.clap_embedding.shape[1] == 512
