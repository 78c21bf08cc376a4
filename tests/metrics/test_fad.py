import re

import numpy as np
import pytest
import torch

from instrumentgen import storage
from instrumentgen.config import load_config
from instrumentgen.data.synthetic import synth_note, timbre_for
from instrumentgen.metrics.clap_score import clap_score
from instrumentgen.metrics.fad import Embedder, FADError, fad, frechet_distance
from instrumentgen.metrics.vggish import VGGish, load_vggish, log_mel_examples
from instrumentgen.pretrained.clap import Clap
from instrumentgen.pretrained.weights import WeightsError


def test_fd_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(200, 16))
    assert fad(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fd_matches_the_closed_form_for_two_gaussians():
    # Diagonal covariances commute: FD = |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_distance(mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(expected, rel=1e-10)
    # And a full covariance against scipy's matrix square root.
    import scipy.linalg

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    sigma_a, sigma_b = a @ a.T, b @ b.T
    mu_a, mu_b = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a + sigma_b - 2 * scipy.linalg.sqrtm(sigma_a @ sigma_b).real)
    assert frechet_distance(mu_a, sigma_a, mu_b, sigma_b) == pytest.approx(expected, rel=1e-8)


def test_fd_grows_with_the_shift_between_sets():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 8))
    assert fad(x, x + 0.1) < fad(x, x + 1.0)
    assert fad(x, x + 1.0) == pytest.approx(8.0, rel=0.05)


def test_bad_embeddings_get_a_clear_error():
    with pytest.raises(FADError, match=re.escape("embeddings of shape (1, 4); allowed: [N, E] with N >= 2")):
        fad(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(FADError, match="dimensions differ"):
        fad(np.random.rand(5, 4), np.random.rand(5, 3))


def test_vggish_release_layout_and_the_tiny_variant_round_trip(cache, tmp_path):
    keys = list(VGGish().state_dict())
    assert keys[0] == "features.0.weight" and keys[-1] == "embeddings.4.bias" and len(keys) == 18
    assert sum(p.numel() for p in VGGish().parameters()) == 72_141_184
    tiny = load_vggish("tiny")
    torch.save(tiny.state_dict(), tmp_path / "vggish.pth")
    storage.write_bytes("memory://weights/vggish.pth", (tmp_path / "vggish.pth").read_bytes())
    again = load_vggish("memory://weights/vggish.pth")
    notes = torch.from_numpy(np.stack([synth_note(p, 100, timbre_for(0), 44100, 1.5) for p in (40, 60)]))
    examples, owner = log_mel_examples(notes, 44100)
    assert examples.shape == (2, 1, 96, 64) and owner.tolist() == [0, 1]
    embedder = Embedder(load_config("tiny", ["metrics.vggish_weights=tiny"]).metrics)
    torch.testing.assert_close(embedder(notes, 44100), again(examples))


def test_vggish_fad_embeddings_are_the_pre_activation_output_of_every_0_96_s_frame(cache):
    """As the reference (google-research frechet_audio_distance: TF `vggish/embedding`, fc2 without
    activation; fadtk: torchvggish without its last ReLU): negative values kept, no per-note mean."""
    model = load_vggish("tiny")
    assert not isinstance(model.embeddings[-1], torch.nn.ReLU) and isinstance(model.embeddings[-1], torch.nn.Linear)
    notes = torch.from_numpy(np.stack([synth_note(p, 100, timbre_for(1), 44100, 3.0) for p in (45, 64)]))
    examples, owner = log_mel_examples(notes, 44100)
    assert owner.tolist() == [0, 0, 0, 1, 1, 1]  # three 0.96 s frames per 3 s note
    embeddings = Embedder(load_config("tiny", ["metrics.vggish_weights=tiny"]).metrics)(notes, 44100)
    assert embeddings.shape == (6, 128)
    with torch.no_grad():
        hidden = model.embeddings[:-1](model.features(examples).permute(0, 2, 3, 1).flatten(1))
        torch.testing.assert_close(embeddings, model.embeddings[-1](hidden))
    assert (embeddings < 0).any()  # what a final ReLU would have zeroed


def reference_frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance as the reference implementations write it: np.cov and scipy's sqrtm."""
    import scipy.linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(sigma_a.dot(sigma_b)).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean))


def test_fad_of_two_embedding_sets_equals_an_independent_numpy_scipy_frechet_distance(cache):
    rng = np.random.default_rng(4)
    a = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
    b = 0.5 + rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
    assert fad(a, b) == pytest.approx(reference_frechet_distance(a, b), rel=1e-8)
    # And on VGGish frame embeddings of two small sets of notes (tiny weights).
    embedder = Embedder(load_config("tiny", ["metrics.vggish_weights=tiny"]).metrics)
    first = embedder(
        torch.from_numpy(np.stack([synth_note(p, 100, timbre_for(0), 44100, 2.0) for p in range(40, 80, 2)])), 44100
    )
    second = embedder(
        torch.from_numpy(np.stack([synth_note(p, 60, timbre_for(3), 44100, 2.0) for p in range(41, 81, 2)])), 44100
    )
    assert first.shape == (40, 128)  # 20 notes x 2 frames
    expected = reference_frechet_distance(first.double().numpy(), second.double().numpy())
    assert fad(first, second) == pytest.approx(expected, rel=1e-6) and expected > 0


def test_vggish_offline_error_names_the_file_and_the_key(cache):
    with pytest.raises(WeightsError, match=r"vggish-10086976\.pth.*metrics\.vggish_weights"):
        load_vggish("vggish")


def test_clap_score_is_the_mean_cosine_to_the_cue():
    cue = torch.tensor([1.0, 0.0])
    notes = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    assert clap_score(cue, notes) == pytest.approx((1 + 0 - 1) / 3)
    clap = Clap.load(load_config("tiny").clap)
    audio = torch.from_numpy(np.stack([synth_note(60, 100, timbre_for(0), 44100, 0.5)] * 2))
    embedding = clap.embed_audio(audio, 44100)
    assert clap_score(embedding[0], embedding) == pytest.approx(1.0, abs=1e-5)


def test_notes_shorter_than_one_example_are_padded_to_one():
    notes = torch.from_numpy(np.stack([synth_note(p, 100, timbre_for(1), 44100, 0.5) for p in (48, 72, 96)]))
    examples, owner = log_mel_examples(notes, 44100)
    assert examples.shape == (3, 1, 96, 64) and owner.tolist() == [0, 1, 2]
    embeddings = Embedder(load_config("tiny").metrics)(notes, 44100)
    assert embeddings.shape == (3, 128) and embeddings.abs().sum() > 0
