"""The DAC wrapper: tiny weights saved and loaded through DAC.save/DAC.load, shapes, codes,
determinism, loudness, fsspec loading, the offline error, resampling."""

from __future__ import annotations

import math

import fsspec
import pytest
import torch

from instrumentgen import storage
from instrumentgen.config import CodecConfig
from instrumentgen.data.synthetic import synth_note, timbre_for
from instrumentgen.pretrained.codec import Codec, CodecError, WeightsError

SR = 44100


@pytest.fixture(scope="module")
def codec(cache) -> Codec:
    return Codec.load(CodecConfig(weights="tiny"))


def note(velocity: int = 100, duration_s: float = 0.5, pitch: int = 60) -> torch.Tensor:
    """One harmonic note at 44.1 kHz -> [1, 1, L]."""
    audio = synth_note(pitch, velocity, timbre_for(0), sample_rate_hz=SR, duration_s=duration_s)
    return torch.from_numpy(audio)[None, None]


def tiny_file(cache) -> str:
    [path] = list(cache.glob("codec/dac-tiny-*.pth"))
    return str(path)


def test_tiny_is_written_by_dac_save_and_read_back_by_dac_load(codec, cache):
    import dac

    saved = torch.load(tiny_file(cache), map_location="cpu")
    assert saved["metadata"]["kwargs"]["n_codebooks"] == 5  # DAC.save's format: kwargs + state dict
    reloaded = dac.DAC.load(tiny_file(cache))
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, codec.model.state_dict()[name]), name
    assert codec.model_id.startswith("dac-tiny-")


def test_properties_match_the_44khz_release(codec):
    assert (codec.sample_rate_hz, codec.hop_length, codec.n_codebooks, codec.card) == (44100, 512, 4, 1024)
    assert codec.frames_for(0.5) == math.ceil(22050 / 512) == 44
    assert codec.frames_for(4.0) == 345


def test_encode_decode_shapes_and_code_range(codec):
    audio = torch.cat([note(100), note(40, pitch=72)])  # [2, 1, 22050], not a multiple of the hop
    codes = codec.encode(audio)
    assert codes.shape == (2, 4, 44) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < 1024
    assert len(codes.unique()) > 4  # the codes move with the audio
    decoded = codec.decode(codes)
    assert decoded.shape == (2, 1, 44 * 512) and decoded.dtype == torch.float32
    assert torch.isfinite(decoded).all()


def test_keeps_the_most_significant_codebooks(cache, codec):
    five = Codec.load(CodecConfig(weights="tiny", n_codebooks=5)).encode(note())
    assert torch.equal(five[:, :4], codec.encode(note()))
    with pytest.raises(CodecError, match="n_codebooks=6"):
        Codec.load(CodecConfig(weights="tiny", n_codebooks=6))


def test_codes_are_deterministic_across_calls_and_loads(cache, codec):
    audio = note()
    assert torch.equal(codec.encode(audio), codec.encode(audio.clone()))
    again = Codec.load(CodecConfig(weights="tiny"))
    assert again.model_id == codec.model_id
    assert torch.equal(again.encode(audio), codec.encode(audio))


def test_loudness_survives_the_round_trip(codec):
    # compress() would normalise both to the same loudness; the wrapper must not.
    loud, quiet = note(velocity=127), note(velocity=127) * 0.1
    rms = [codec.decode(codec.encode(x)).pow(2).mean().sqrt().item() for x in (loud, quiet)]
    assert rms[0] > 2 * rms[1]
    assert not torch.equal(codec.encode(loud), codec.encode(quiet))


def test_bad_inputs_name_the_expected_shape(codec):
    with pytest.raises(CodecError, match=r"\[B, 1, L\]"):
        codec.encode(torch.zeros(2, 22050))
    with pytest.raises(CodecError, match=r"\[B, 4, N\]"):
        codec.decode(torch.zeros(2, 3, 10, dtype=torch.long))
    with pytest.raises(CodecError, match=r"\[0, 1024\)"):
        codec.decode(torch.full((1, 4, 10), 1024))


def test_loads_from_memory_and_file_urls(cache, codec):
    data = open(tiny_file(cache), "rb").read()
    storage.write_bytes("memory://weights/dac-tiny.pth", data)
    from_memory = Codec.load(CodecConfig(weights="memory://weights/dac-tiny.pth"))
    from_file_url = Codec.load(CodecConfig(weights="file://" + tiny_file(cache)))
    for other in (from_memory, from_file_url):
        assert torch.equal(other.encode(note()), codec.encode(note()))
    # named by content, not by location
    assert from_memory.model_id == from_file_url.model_id == "dac-" + codec.model_id.rsplit("-", 1)[1]
    fsspec.filesystem("memory").rm("/weights", recursive=True)


def test_loads_from_s3(cache, codec, s3_bucket):
    url = f"{s3_bucket}/codec/dac-tiny.pth"
    storage.write_bytes(url, open(tiny_file(cache), "rb").read())
    assert torch.equal(Codec.load(CodecConfig(weights=url)).encode(note()), codec.encode(note()))


def test_missing_or_bad_files_raise_weights_error(cache, tmp_path):
    with pytest.raises(WeightsError, match="codec.weights='/no/such/dac.pth'"):
        Codec.load(CodecConfig(weights="/no/such/dac.pth"))
    not_a_model = tmp_path / "notes.pth"
    not_a_model.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="is not a DAC.save file"):
        Codec.load(CodecConfig(weights=str(not_a_model)))


def test_release_offline_fails_fast_naming_file_place_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("INSTRUMENTGEN_DAC_CACHE", str(tmp_path / "dac"))
    with pytest.raises(WeightsError) as error:  # raised before any network call
        Codec.load(CodecConfig(weights="44khz"))
    message = str(error.value)
    assert "https://github.com/descriptinc/descript-audio-codec/releases/download/0.0.1/weights.pth" in message
    assert str(tmp_path / "dac" / "weights_44khz_8kbps_0.0.1.pth") in message
    assert "codec.weights=" in message
