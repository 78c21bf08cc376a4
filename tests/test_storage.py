import pytest

from instrumentgen import storage


@pytest.mark.parametrize("scheme", ["local", "memory"])
def test_atomic_write_read_and_listing(tmp_path, scheme):
    root = str(tmp_path) if scheme == "local" else "memory://storage-test"
    storage.write_json(storage.join(root, "a", "b.json"), {"x": 1})
    storage.write_bytes(storage.join(root, "a", "c.bin"), b"\x00\x01")
    assert storage.read_json(storage.join(root, "a", "b.json")) == {"x": 1}
    assert storage.read_bytes(storage.join(root, "a", "c.bin")) == b"\x00\x01"
    names = [u.rsplit("/", 1)[-1] for u in storage.list_files(root)]
    assert names == ["b.json", "c.bin"]  # no temporary objects left behind
    assert storage.list_files(root, ".json")[0].endswith("a/b.json")
    assert storage.list_files(storage.join(root, "missing")) == []


def test_interrupted_write_leaves_no_object_under_the_final_name(tmp_path, monkeypatch):
    fs, _ = storage.filesystem(str(tmp_path))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(fs), "mv", crash)
    with pytest.raises(KeyboardInterrupt):
        storage.write_bytes(str(tmp_path / "final.bin"), b"data")
    assert not (tmp_path / "final.bin").exists()
    assert storage.list_files(str(tmp_path)) == []


def test_s3_round_trip(s3_bucket):
    storage.write_json(storage.join(s3_bucket, "m", "manifest.json"), {"ok": True})
    assert storage.read_json(storage.join(s3_bucket, "m", "manifest.json")) == {"ok": True}
    assert storage.list_files(s3_bucket) == [f"{s3_bucket}/m/manifest.json"]
