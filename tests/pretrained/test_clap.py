"""The CLAP wrapper: embeddings, determinism, the checkpoint round trip through load_ckpt, the
RoBERTa tower from a local folder, offline errors, and an import that does not hang."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from instrumentgen import storage
from instrumentgen.audio import resample
from instrumentgen.config import ClapConfig, load_config
from instrumentgen.data.synthetic import synth_note, timbre_for
from instrumentgen.pretrained.clap import Clap, ClapError, WeightsError, save_checkpoint

PROMPTS = ["warm analog brass", "bright plucked nylon guitar", "dark synth pad"]


@pytest.fixture(scope="module")
def tiny_cfg() -> ClapConfig:
    return load_config("tiny").clap


@pytest.fixture(scope="module")
def clap(cache, tiny_cfg) -> Clap:
    return Clap.load(tiny_cfg)


def notes(sample_rate_hz: int = 16000) -> torch.Tensor:
    """Three different harmonic notes, 1 s -> [3, L]."""
    audio = [
        synth_note(pitch, 100, timbre_for(i), sample_rate_hz=sample_rate_hz, duration_s=1.0)
        for i, pitch in enumerate((40, 64, 90))
    ]
    return torch.from_numpy(np.stack(audio))


def test_text_embeddings_are_unit_norm_and_differ_by_prompt(clap):
    embedding = clap.embed_text(PROMPTS)
    assert embedding.shape == (3, 512) and embedding.dtype == torch.float32
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(3))
    assert (embedding[0] - embedding[1]).abs().max() > 1e-3
    assert (embedding[1] - embedding[2]).abs().max() > 1e-3
    torch.testing.assert_close(clap.embed_text(PROMPTS[:1])[0], embedding[0])  # batch-independent


def test_audio_embeddings_are_unit_norm_and_resampled(clap):
    audio = notes(16000)
    embedding = clap.embed_audio(audio, 16000)
    assert embedding.shape == (3, 512)
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(3))
    assert (embedding[0] - embedding[2]).abs().max() > 1e-4  # different notes, different embeddings
    # the rate is honoured: the same notes at 44.1 kHz embed alike, read as 48 kHz they do not
    at_44k = clap.embed_audio(resample(audio, 16000, 44100), 44100)
    assert torch.nn.functional.cosine_similarity(at_44k, embedding).min() > 0.99
    assert not torch.allclose(clap.embed_audio(audio, 48000), embedding, atol=1e-3)


def test_audio_fills_the_models_own_window_as_laion_clap_does(clap, monkeypatch):
    """laion_clap's `get_audio_embedding_from_data` always fills 480000 samples (10 s): at the released
    models' window ours equals it exactly; the tiny model's 1 s window holds a short note repeated."""
    short = notes(48000)[:, :12000]  # 0.25 s at 48 kHz
    monkeypatch.setitem(clap.module.model_cfg["audio_cfg"], "clip_samples", 480000)
    assert clap.clip_samples == 480000
    upstream = clap.module.get_audio_embedding_from_data(short, use_tensor=True).detach()
    assert torch.equal(clap.embed_audio(short, 48000), upstream)
    monkeypatch.undo()
    assert clap.clip_samples == 48000  # clap_configs/tiny.json
    windows = [{"waveform": note.repeat(4), "longer": torch.tensor([False])} for note in short]
    with torch.no_grad():
        repeated = clap.module.model.get_audio_embedding(windows)
    assert torch.equal(clap.embed_audio(short, 48000), repeated)
    assert not torch.allclose(repeated, upstream, atol=1e-4)  # the window length matters


def test_embeddings_are_deterministic_across_loads(cache, clap, tiny_cfg):
    again = Clap.load(tiny_cfg)
    assert again.model_id == clap.model_id and again.model_id.startswith("clap-tiny-")
    assert torch.equal(again.embed_text(PROMPTS), clap.embed_text(PROMPTS))
    assert torch.equal(again.embed_audio(notes(), 16000), clap.embed_audio(notes(), 16000))


def test_tiny_checkpoint_round_trips_through_load_ckpt(cache, clap, tiny_cfg, tmp_path):
    [path] = list(cache.glob("clap/clap-tiny-*.pt"))
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert "text_branch.embeddings.position_ids" in saved["state_dict"]  # what load_ckpt deletes
    # save the loaded model again and read it back by path: the same embeddings
    copy = tmp_path / "clap-copy.pt"
    save_checkpoint(clap.module, copy)
    reloaded = Clap.load(dataclasses.replace(tiny_cfg, weights=str(copy)))
    assert torch.equal(reloaded.embed_text(PROMPTS), clap.embed_text(PROMPTS))


def test_loads_a_checkpoint_from_an_fsspec_url(cache, clap, tiny_cfg):
    [path] = list(cache.glob("clap/clap-tiny-*.pt"))
    storage.write_bytes("memory://clap/tiny.pt", path.read_bytes())
    from_memory = Clap.load(dataclasses.replace(tiny_cfg, weights="memory://clap/tiny.pt"))
    assert torch.equal(from_memory.embed_text(PROMPTS), clap.embed_text(PROMPTS))


def test_wrong_architecture_for_a_checkpoint_is_a_weights_error(cache, clap, tiny_cfg, tmp_path):
    [path] = list(cache.glob("clap/clap-tiny-*.pt"))
    with pytest.raises(WeightsError, match="is not a CLAP checkpoint for amodel='HTSAT-tiny'"):
        Clap.load(dataclasses.replace(tiny_cfg, weights=str(path), amodel="HTSAT-tiny"))


def test_bad_inputs_are_refused(clap, tiny_cfg):
    with pytest.raises(ClapError, match="non-empty list"):
        clap.embed_text([])
    with pytest.raises(ClapError, match=r"prompts at \[1\] are empty"):
        clap.embed_text(["brass", "   "])
    with pytest.raises(ClapError, match=r"\[B, L\]"):
        clap.embed_audio(torch.zeros(1, 1, 100), 16000)
    with pytest.raises(ClapError, match="clap.amodel='HTSAT-huge' is not allowed"):
        Clap.load(dataclasses.replace(tiny_cfg, amodel="HTSAT-huge"))


def roberta_folder(path) -> str:
    """A small RoBERTa (hidden 768 as CLAP's projection expects, 1 layer) with a byte-level vocab."""
    from clap_module.tokenizer import bytes_to_unicode
    from transformers import RobertaConfig

    path.mkdir()
    vocab = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", *bytes_to_unicode().values()]
    (path / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=768,
        num_hidden_layers=1,
        num_attention_heads=12,
        intermediate_size=64,
        max_position_embeddings=80,
    ).save_pretrained(path)
    return str(path)


def test_roberta_tower_comes_from_the_tokenizer_folder_offline(cache, tmp_path):
    cfg = ClapConfig(weights="tiny", amodel="tiny", tmodel="roberta", tokenizer=roberta_folder(tmp_path / "roberta"))
    clap = Clap.load(cfg)
    embedding = clap.embed_text(PROMPTS)
    assert embedding.shape == (3, 512)
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(3))
    assert torch.equal(Clap.load(cfg).embed_text(PROMPTS), embedding)


def test_roberta_without_files_names_the_tokenizer_key(cache, tmp_path):
    with pytest.raises(WeightsError, match="set clap.tokenizer to a folder with roberta-base's config.json"):
        Clap.load(ClapConfig(weights="tiny", amodel="tiny", tmodel="roberta"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match=f"clap.tokenizer='{empty}' lacks config.json, vocab.json, merges.txt"):
        Clap.load(ClapConfig(weights="tiny", amodel="tiny", tmodel="roberta", tokenizer=str(empty)))


def test_music_offline_names_file_place_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUMENTGEN_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as error:  # raised before any model is built or network used
        Clap.load(ClapConfig(weights="music"))
    message = str(error.value)
    assert "https://huggingface.co/lukewys/laion_clap/resolve/main/music_audioset_epoch_15_esc_90.14.pt" in message
    assert str(tmp_path / "clap" / "music_audioset_epoch_15_esc_90.14.pt") in message
    assert "clap.weights=" in message


def test_import_in_a_fresh_process_does_not_hang():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", "import instrumentgen.pretrained.clap"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
