"""DAC codec wrapper: load weights by name, path or URL; audio [B, 1, L] <-> codes [B, K, N].

`Codec.load(cfg.codec)` reads `codec.weights`: "44khz" is the 44.1 kHz DAC release (hop 512,
9 codebooks x 1024, of which the paper keeps the 4 most significant); "tiny" is a small random-init `dac.DAC` with
the same rate, hop and codebook size (made level-preserving, see `_make_level_preserving`),
saved once with `DAC.save` and always read back with `DAC.load`, so tests exercise the real
loading path. Any other string is a local path or an fsspec URL of a file written by `DAC.save`.

Encoding uses the model directly, not `DAC.compress`, which normalises loudness: the velocity of
a note must survive the round trip.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from instrumentgen.config import CodecConfig
from instrumentgen.errors import UserError
from instrumentgen.pretrained import weights as weight_files
from instrumentgen.pretrained.weights import WeightsError

if TYPE_CHECKING:
    import dac

__all__ = ["Codec", "CodecError", "WeightsError"]

RELEASES = {"44khz": ("44khz", "8kbps", "0.0.1")}  # name -> (model_type, bitrate, tag) in dac's tables
DAC_CACHE_ENV = "INSTRUMENTGEN_DAC_CACHE"
# Same rate, hop (2*4*8*8 = 512) and codebook size as the release; 5 codebooks so that keeping
# "the 4 most significant" is a real selection; tiny widths so a few seconds encode in ~0.1 s.
TINY_KWARGS = dict(
    encoder_dim=2,
    encoder_rates=[2, 4, 8, 8],
    latent_dim=16,
    decoder_dim=16,
    decoder_rates=[8, 8, 4, 2],
    n_codebooks=5,
    codebook_size=1024,
    codebook_dim=4,
    sample_rate=44100,
)
TINY_SEED = 0
TINY_RECIPE = 1  # bump when _make_level_preserving changes, so cached tiny files are rebuilt


class CodecError(UserError):
    """Bad input to the codec: the message names the value and what is allowed."""


def dac_cache_dir() -> Path:
    """Where the DAC release is cached: dac's own folder unless `$INSTRUMENTGEN_DAC_CACHE` is set."""
    return Path(os.environ.get(DAC_CACHE_ENV) or Path.home() / ".cache" / "descript" / "dac")


def _release_file(name: str) -> Path:
    from dac import utils as dac_utils

    model_type, bitrate, tag = RELEASES[name]
    url = dac_utils.__MODEL_URLS__[(model_type, tag, bitrate)]
    # The file name dac.utils.download uses, so a copy fetched by dac itself is found and reused.
    dest = dac_cache_dir() / f"weights_{model_type}_{bitrate}_{tag}.pth"
    return weight_files.download(url, dest, f"DAC {name!r}", "codec.weights")


def _save_tiny(path: Path) -> None:
    from dac import DAC

    model = DAC(**TINY_KWARGS).eval()
    _make_level_preserving(model)
    model.save(str(path), package=False)


def tiny_file() -> Path:
    """The tiny DAC weight file in the weights cache (written once)."""
    return weight_files.seeded_file("codec", "dac-tiny.pth", [TINY_KWARGS, TINY_RECIPE], TINY_SEED, _save_tiny)


@torch.no_grad()
def _make_level_preserving(model: "dac.DAC") -> None:
    """Make a random-init DAC code loudness, as a trained one does, so velocity survives the tiny codec.

    A random residual VQ picks codewords by cosine similarity only (DAC's lookup), so every
    level of a note gets the same codes and decodes at the same level. Three fixed changes:
    the first quantizer's input gets a bias of the size of a reference note's latent, so the
    codeword's direction depends on the level (quiet -> near the bias); that codebook's norms
    grow with the angle from the bias; the later codebooks are 100x smaller (finer residual
    steps, as in a trained RVQ). Decoder biases are zeroed (dac's init misses ConvTranspose1d)
    so silence decodes to silence, and the last layer is scaled so the reference note decodes
    at its own RMS.
    """
    for layer in model.modules():
        if isinstance(layer, torch.nn.ConvTranspose1d):
            layer.bias.zero_()
    t = torch.arange(model.sample_rate // 2) / model.sample_rate
    reference = (0.1 * torch.sin(2 * math.pi * 440.0 * t)).reshape(1, 1, -1)
    first, *later = model.quantizer.quantizers
    latent = first.in_proj(model.encoder(model.preprocess(reference, model.sample_rate)))
    direction = torch.nn.functional.normalize(torch.randn(latent.shape[1]), dim=0)
    first.in_proj.bias.copy_(direction * latent.norm(dim=1).median())
    codewords = torch.nn.functional.normalize(first.codebook.weight, dim=1)
    first.codebook.weight.copy_(codewords * (1 - codewords @ direction)[:, None])
    for quantizer in later:
        quantizer.codebook.weight.mul_(0.01)
    _, codes, *_ = model.encode(model.preprocess(reference, model.sample_rate))
    decoded = model.decode(model.quantizer.from_codes(codes)[0])
    last_conv = model.decoder.model[-2]
    last_conv.weight_g.mul_(reference.pow(2).mean().sqrt() / decoded.pow(2).mean().sqrt())


class Codec:
    """A loaded DAC model keeping its `n_codebooks` most significant codebooks."""

    def __init__(self, model: "dac.DAC", n_codebooks: int, model_id: str, device: str = "cpu"):
        if not 1 <= n_codebooks <= model.n_codebooks:
            raise CodecError(f"n_codebooks={n_codebooks} is not allowed; this model has 1..{model.n_codebooks}")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self._n_codebooks = n_codebooks
        self.model_id = model_id

    @classmethod
    def load(cls, cfg: CodecConfig) -> "Codec":
        """The DAC of `cfg.weights` ("44khz" release, "tiny" random init, a local path or fsspec URL)
        on `cfg.device`, keeping `cfg.n_codebooks` codebooks."""
        from dac import DAC  # imports audiotools (~3 s): only when a model is really loaded

        weights = cfg.weights
        if weights == "tiny":
            path = tiny_file()
            model_id = f"dac-tiny-{weight_files.file_digest(path)}"
        elif weights in RELEASES:
            path = _release_file(weights)
            model_id = "dac-{}-{}-{}".format(*RELEASES[weights])
        else:
            path = weight_files.local_file(weights, "codec", "codec.weights")
            model_id = f"dac-{weight_files.file_digest(path)}"  # by content: the same file anywhere has one id
        try:
            model = DAC.load(str(path))
        except Exception as e:  # DAC.load raises whatever torch.load / the constructor raise
            raise WeightsError(f"codec.weights={weights!r}: {path} is not a DAC.save file ({e})") from e
        return cls(model, cfg.n_codebooks, model_id, cfg.device)

    @property
    def sample_rate_hz(self) -> int:
        return int(self.model.sample_rate)

    @property
    def hop_length(self) -> int:
        return int(self.model.hop_length)

    @property
    def n_codebooks(self) -> int:
        return self._n_codebooks

    @property
    def card(self) -> int:
        """Codebook size: codes are in [0, card)."""
        return int(self.model.codebook_size)

    def frames_for(self, duration_s: float) -> int:
        """Number of code frames N for a note of `duration_s` seconds."""
        return math.ceil(round(duration_s * self.sample_rate_hz) / self.hop_length)

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, 1, L] float at `sample_rate_hz` (any device) -> codes [B, n_codebooks, ceil(L / hop)] long."""
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise CodecError(f"audio shape {tuple(audio.shape)} is not allowed; expected [B, 1, L] mono")
        audio = audio.to(self.device, torch.float32)
        _, codes, *_ = self.model.encode(self.model.preprocess(audio, self.sample_rate_hz))
        return codes[:, : self.n_codebooks].long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, n_codebooks, N] long (any device) -> audio [B, 1, N * hop] float on the codec's device."""
        if codes.dim() != 3 or codes.shape[1] != self.n_codebooks:
            raise CodecError(f"codes shape {tuple(codes.shape)} is not allowed; expected [B, {self.n_codebooks}, N]")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.card):
            raise CodecError(f"codes must be in [0, {self.card}); got [{codes.min()}, {codes.max()}]")
        z, _, _ = self.model.quantizer.from_codes(codes.to(self.device, torch.long))
        return self.model.decode(z)
