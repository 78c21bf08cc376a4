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


def test_interrupted_local_write_leaves_no_object_under_the_final_name(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(storage.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        storage.write_bytes(str(tmp_path / "final.bin"), b"data")
    assert not (tmp_path / "final.bin").exists()
    assert storage.list_files(str(tmp_path), temporary=True) == []  # the temporary file is gone too


def test_a_local_temporary_file_is_listed_only_on_request(tmp_path):
    storage.write_bytes(str(tmp_path / "a" / "x.bin"), b"1")
    (tmp_path / "a" / ".tmp-0123-x.bin").write_bytes(b"half")  # what a SIGKILLed writer leaves
    assert storage.list_files(str(tmp_path)) == [str(tmp_path / "a" / "x.bin")]
    assert storage.list_files(str(tmp_path), temporary=True) == [
        str(tmp_path / "a" / ".tmp-0123-x.bin"),
        str(tmp_path / "a" / "x.bin"),
    ]
    storage.remove(str(tmp_path / "a"))
    storage.remove(str(tmp_path / "a"))  # nothing there: no error
    assert storage.list_files(str(tmp_path), temporary=True) == []


def test_an_object_store_write_is_one_put_and_never_creates_a_bucket(s3_bucket, monkeypatch):
    import s3fs

    calls = []
    original = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        calls.append(method if isinstance(method, str) else method.__name__)
        return await original(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
    storage.write_bytes(storage.join(s3_bucket, "deep", "er", "x.bin"), b"data")
    assert calls == ["put_object"]
    assert storage.read_bytes(storage.join(s3_bucket, "deep", "er", "x.bin")) == b"data"
    assert storage.list_files(s3_bucket, temporary=True) == [f"{s3_bucket}/deep/er/x.bin"]
    storage.check_writable(storage.join(s3_bucket, "library"))
    assert storage.list_files(s3_bucket, temporary=True) == [f"{s3_bucket}/deep/er/x.bin"]  # probe removed
    missing = f"{s3_bucket}-mistyped"
    with pytest.raises(
        storage.StorageError, match=f"cannot write to '{missing}/library': no such file, folder or bucket"
    ):
        storage.check_writable(storage.join(missing, "library"))
    assert not storage.exists(missing)  # the mistyped bucket was not created


def test_unreachable_and_throttled_stores_are_transient(tmp_path):
    with pytest.raises(storage.TransientStorageError, match="cannot read 'x': its endpoint is unreachable"):
        with storage.storage_errors("x", "read"):
            raise ConnectionError("refused")
    with pytest.raises(storage.TransientStorageError, match="the store is busy or failing"):
        with storage.storage_errors("x", "write"):
            raise OSError("An error occurred (SlowDown) when calling the PutObject operation")
    with pytest.raises(storage.StorageError) as denied:
        with storage.storage_errors("x", "write"):
            raise PermissionError("denied")
    assert not isinstance(denied.value, storage.TransientStorageError)


def test_s3_round_trip(s3_bucket):
    storage.write_json(storage.join(s3_bucket, "m", "manifest.json"), {"ok": True})
    assert storage.read_json(storage.join(s3_bucket, "m", "manifest.json")) == {"ok": True}
    assert storage.list_files(s3_bucket) == [f"{s3_bucket}/m/manifest.json"]


def test_storage_failures_are_one_line_user_errors_naming_the_url(tmp_path, s3_server, monkeypatch):
    import s3fs

    from instrumentgen.errors import MissingObjectError, StorageError

    missing = str(tmp_path / "missing.json")
    with pytest.raises(MissingObjectError, match=f"cannot read '{missing}': no such file, folder or bucket"):
        storage.read_json(missing)
    assert issubclass(MissingObjectError, FileNotFoundError)  # absence stays catchable as such
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(
        StorageError, match=f"cannot write '{tmp_path}/a-file/x.bin': a file stands where its path needs a folder"
    ):
        storage.write_bytes(str(tmp_path / "a-file" / "x.bin"), b"1")
    with pytest.raises(
        StorageError, match="cannot write to '.*/a-file/out': a file stands where its path needs a folder"
    ):
        storage.check_writable(str(tmp_path / "a-file" / "out"))
    storage.check_writable(str(tmp_path / "out"))
    assert list((tmp_path / "out").iterdir()) == []  # the probe leaves nothing behind
    with pytest.raises(StorageError, match=r"'nope://x': .*allowed: a local path or a file://, s3://"):
        storage.exists("nope://x")
    for key in [k for k in __import__("os").environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # loopback only, even when looking for credentials
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(StorageError, match="cannot write 's3://b/x.json': no credentials for it; set AWS_ACCESS"):
            storage.write_json("s3://b/x.json", {})
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_join_never_makes_an_empty_key_segment():
    assert storage.join("s3://b/x/", "a", "", "/c") == "s3://b/x/a/c"
    assert storage.join("/tmp/x", "") == "/tmp/x"


def test_an_object_replaced_between_its_head_and_its_read_reads_whole(s3_bucket, monkeypatch):
    """A status.json overwritten while Serve reads it (seen in CI as a 422): the read gets one complete
    version, old or new, never an ETag error (the old read pinned the ETag of its HEAD; one GET has
    no HEAD before it, so here it reads the old version)."""
    import s3fs

    url = storage.join(s3_bucket, "status.json")
    storage.write_json(url, {"status": "running"})
    original = s3fs.S3FileSystem._call_s3

    async def overwritten_after_head(self, method, *args, **kwargs):
        answer = await original(self, method, *args, **kwargs)
        if method == "head_object":
            body = b'{"status": "done"}'
            await original(self, "put_object", Bucket=kwargs["Bucket"], Key=kwargs["Key"], Body=body)
        return answer

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", overwritten_after_head)
    storage.filesystem(url)[0].invalidate_cache()
    assert storage.read_json(url) in ({"status": "running"}, {"status": "done"})


def test_an_object_larger_than_s3fs_chunks_is_read_with_one_get(s3_bucket, monkeypatch):
    """s3fs splits an object over its block size (50 MiB) into ranged GETs that an overwrite in between
    could mix; the read stays one GET whatever the size (the block size made tiny here)."""
    import s3fs

    url = storage.join(s3_bucket, "index.parquet")
    storage.write_bytes(url, bytes(range(256)) * 64)
    fs, _ = storage.filesystem(url)
    monkeypatch.setattr(fs, "default_block_size", 1024)
    gets = []
    original = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        gets.extend([kwargs.get("Range")] if method == "get_object" else [])
        return await original(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
    assert storage.read_bytes(url) == bytes(range(256)) * 64
    assert gets == [None]  # one GET of the whole object, no ranges
