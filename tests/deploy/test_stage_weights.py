"""jobs.stage_weights: weights copied to <bucket>/weights with sha256 sums, read back by the loaders
from the bucket, and one-line errors for a missing source, a missing object and a changed object."""

from __future__ import annotations

import hashlib
import json

import fsspec
import pytest

from instrumentgen import storage
from instrumentgen.config import load_config
from instrumentgen.metrics.vggish import load_vggish
from instrumentgen.pretrained.loading import load_models
from instrumentgen.pretrained.staged import staged_overrides
from instrumentgen.pretrained.weights import WeightsError, local_file, local_folder
from jobs import stage_weights


@pytest.fixture(scope="module")
def sources(cache, tmp_path_factory) -> dict[str, str]:
    """The tiny DAC, CLAP and VGGish files of the weights cache and a tokenizer folder, as staging sources."""
    cfg = load_config("tiny")
    load_models(cfg, None)
    load_vggish("tiny")
    tokenizer = tmp_path_factory.mktemp("roberta-base")
    (tokenizer / "vocab.json").write_text(json.dumps({"<s>": 0, "</s>": 2}))
    (tokenizer / "merges.txt").write_text("#version: 0.2\n")
    (tokenizer / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    (found_codec,), (found_clap,) = cache.glob("codec/dac-tiny-*.pth"), cache.glob("clap/clap-tiny-*.pt")
    (found_vggish,) = cache.glob("vggish/vggish-tiny-*.pth")
    return {
        "codec": str(found_codec),
        "clap": str(found_clap),
        "tokenizer": str(tokenizer),
        "vggish": str(found_vggish),
    }


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_stage_writes_files_sums_and_manifest_that_the_loaders_read(s3_bucket, sources, capsys):
    bucket = f"{s3_bucket}/prefix"
    assert stage_weights.main([f"bucket={bucket}", *(f"{k}={v}" for k, v in sources.items())]) == 0
    printed = capsys.readouterr().out.splitlines()[-1]
    urls = staged_overrides(bucket)
    assert printed == " ".join(f"{key}={url}" for key, url in urls.items())
    manifest = storage.read_json(f"{bucket}/weights/manifest.json")
    assert manifest["overrides"] == urls
    assert manifest["files"]["dac/weights_44khz_8kbps_0.0.1.pth"]["sha256"] == sha256(sources["codec"])
    assert manifest["files"]["roberta-base/merges.txt"]["bytes"] == len("#version: 0.2\n")
    assert sorted(manifest["files"]) == [
        "clap/music_audioset_epoch_15_esc_90.14.pt",
        "dac/weights_44khz_8kbps_0.0.1.pth",
        "roberta-base/config.json",
        "roberta-base/merges.txt",
        "roberta-base/vocab.json",
        "vggish/vggish-10086976.pth",
    ]
    sidecar = storage.read_bytes(urls["clap.weights"] + ".sha256").decode()
    assert sidecar == f"{sha256(sources['clap'])}  music_audioset_epoch_15_esc_90.14.pt\n"
    # Every loader reads the staged URLs: the config overrides the job printed.
    cfg = load_config("tiny", [f"{key}={url}" for key, url in urls.items() if key != "clap.tokenizer"])
    _, codec, clap = load_models(cfg, None)
    assert codec.model_id.startswith("dac-") and clap.embed_text(["brass"]).shape == (1, 512)
    # the last layer is the 128-d pre-activation embedding (no ReLU after it, as the reference)
    assert (
        load_vggish(urls["metrics.vggish_weights"]).embeddings[-1].out_features == 128
    )  # the pre-activation embedding layer
    folder = local_folder(urls["clap.tokenizer"], "tokenizer", "clap.tokenizer")  # what Clap.load reads
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "merges.txt", "vocab.json"]
    assert (folder / "merges.txt").read_text() == "#version: 0.2\n"
    assert stage_weights.main([f"verify={bucket}"]) == 0
    assert capsys.readouterr().out.startswith(f"6 files match {bucket}/weights/manifest.json")


def test_a_changed_or_missing_object_is_one_line(s3_bucket, sources, capsys):
    assert stage_weights.main([f"bucket={s3_bucket}", *(f"{k}={v}" for k, v in sources.items())]) == 0
    codec_url = staged_overrides(s3_bucket)["codec.weights"]
    with fsspec.open(codec_url, "wb") as f:  # a partial upload over the staged file
        f.write(b"truncated")
    capsys.readouterr()
    assert stage_weights.main([f"verify={s3_bucket}"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"error: {codec_url}: sha256 mismatch (found {hashlib.sha256(b'truncated').hexdigest()[:12]}"
    )
    with pytest.raises(WeightsError, match=r"codec.weights='s3://.*': sha256 mismatch with .*\.sha256"):
        local_file(codec_url, "codec", "codec.weights")
    storage.filesystem(codec_url)[0].rm(storage.filesystem(codec_url)[1])
    assert stage_weights.main([f"verify={s3_bucket}"]) == 2
    assert capsys.readouterr().err == f"error: {codec_url}: missing; stage it again with python -m jobs.stage_weights\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bucket=s3://b", "codec=/no/dac.pth", "clap=x", "tokenizer=y"], "codec='/no/dac.pth': no such file"),
        (["bucket=s3://b", "codec=x"], "clap=, tokenizer= required; allowed: bucket=, verify=, codec="),
        (["bucket=s3://b", "dac=z"], "argument 'dac=z' is not allowed; allowed: bucket=, verify="),
        (["verify=s3://b", "codec=x"], "verify= takes no other argument"),
    ],
)
def test_bad_arguments_are_one_line_and_stage_nothing(argv, message, sources, tmp_path, capsys):
    argv = [arg.replace("=x", f"={sources['clap']}").replace("=y", f"={sources['tokenizer']}") for arg in argv]
    argv = [arg.replace("s3://b", str(tmp_path / "bucket")) for arg in argv]
    assert stage_weights.main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and message in line
    assert not (tmp_path / "bucket").exists()  # the sources are checked before anything is copied


def test_verify_without_manifest(tmp_path, capsys):
    assert stage_weights.main([f"verify={tmp_path}"]) == 2
    assert "manifest.json: missing; stage the weights first" in capsys.readouterr().err
