"""Fréchet audio distance: the Fréchet distance between Gaussians fitted to two embedding sets.

    FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)

in float64. The trace of the matrix square root is taken from the eigenvalues of the symmetric
matrix S_a^1/2 S_b S_a^1/2 (clipped at 0), which is stable where `scipy.linalg.sqrtm` of the
non-symmetric product S_a S_b returns complex noise for near-singular covariances (few notes,
many dimensions).

Embedders (`metrics.fad_embedder`): "vggish" (the paper's; `metrics.vggish_weights`): as the
reference implementation (google-research `frechet_audio_distance`, and `fadtk`), the 128-d
pre-activation embedding of every 0.96 s frame of every note, all frames of a set in one Gaussian
(`vggish.py`); or "clap" (CLAP audio embeddings, 512-d, one per note).
"""

from __future__ import annotations

import numpy as np
import torch

from instrumentgen.errors import UserError


class FADError(UserError):
    """Embedding sets the distance cannot be computed on."""


def gaussian(embeddings: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """[N, E] -> (mean [E], covariance [E, E]) in float64; N >= 2."""
    x = np.asarray(embeddings.detach().cpu() if isinstance(embeddings, torch.Tensor) else embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise FADError(f"embeddings of shape {x.shape}; allowed: [N, E] with N >= 2")
    if not np.isfinite(x).all():
        raise FADError("embeddings hold NaN or inf; allowed: finite values")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b)."""
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape:
        raise FADError(f"dimensions differ: {mu_a.shape} vs {mu_b.shape}; allowed: embeddings of one embedder")
    root_a = _sqrt_psd(sigma_a)
    middle = root_a @ sigma_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = float(np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_root)
    return max(distance, 0.0)


def fad(embeddings_a, embeddings_b) -> float:
    """FAD between two embedding sets [N_a, E] and [N_b, E]."""
    return frechet_distance(*gaussian(embeddings_a), *gaussian(embeddings_b))


class Embedder:
    """audio [B, L] at a sample rate -> embeddings [N, E] (VGGish: N = B x 0.96 s frames per note;
    CLAP: N = B); `name` says which, for tables."""

    def __init__(self, metrics_cfg, clap=None):
        self.name = metrics_cfg.fad_embedder
        if self.name == "vggish":
            from instrumentgen.metrics.vggish import load_vggish

            self.model = load_vggish(metrics_cfg.vggish_weights)
        elif self.name == "clap":
            if clap is None:
                raise FADError("metrics.fad_embedder='clap' needs a loaded CLAP model")
            self.model = clap
        else:
            raise FADError(f"metrics.fad_embedder={self.name!r}; allowed: vggish, clap")

    def __call__(self, audio: torch.Tensor, sample_rate_hz: int) -> torch.Tensor:
        if self.name == "clap":
            return self.model.embed_audio(audio, sample_rate_hz).cpu()
        from instrumentgen.metrics.vggish import vggish_embeddings

        return vggish_embeddings(self.model, audio, sample_rate_hz)
