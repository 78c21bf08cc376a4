"""VGGish (Hershey et al., 2017) in torch, for FAD as the paper reports it.

The network and its input are those of `harritaylor/torchvggish` (whose release file is the state
dict of this module: `features.*` conv layers, `embeddings.*` fully connected layers): 16 kHz
audio -> log mel examples [N, 1, 96, 64] (25 ms windows, 10 ms hop, 64 HTK mel bands 125-7500 Hz,
log(mel + 0.01), 0.96 s per example) -> 128-d embeddings. The PCA post-processing is not applied
(FAD compares distributions; an invertible affine map changes nothing but the scale it is read in).

For FAD the embedding is the reference implementation's (google-research `frechet_audio_distance`
reads the TF model's `vggish/embedding` tensor, which `vggish_slim.py` defines as the 128-d `fc2`
layer with `activation_fn=None`; `fadtk`'s VGGish drops torchvggish's last ReLU for the same
reason): the final linear layer's output *before* any ReLU, one embedding per 0.96 s example,
never averaged per note (`vggish_embeddings`).

`metrics.vggish_weights`: "vggish" (the release, downloaded when online, else an error naming the
file), "tiny" (a random-init narrow variant for tests, saved and loaded through the same state
dict path), or a local path / fsspec URL. Layer widths are read from the state dict's shapes.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchaudio.functional as AF
from torch import nn

from instrumentgen.audio import resample
from instrumentgen.pretrained import weights as weight_files

RELEASE_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"
SAMPLE_RATE_HZ, WINDOW, HOP, N_FFT, N_MELS, EXAMPLE_FRAMES = 16_000, 400, 160, 512, 64, 96
RELEASE_WIDTHS = ((64, 128, 256, 512), (4096, 4096))
TINY_WIDTHS, TINY_SEED = ((4, 8, 8, 16), (32, 32)), 0
WIDTH_LAYERS = (0, 3, 6, 11)  # `features` indices of the first convolution of each width


class VGGish(nn.Module):
    """log mel examples [N, 1, 96, 64] -> embeddings [N, 128]."""

    def __init__(self, channels: tuple[int, ...] = RELEASE_WIDTHS[0], hidden: tuple[int, ...] = RELEASE_WIDTHS[1]):
        super().__init__()
        c1, c2, c3, c4 = channels
        layers, in_channels = [], 1
        for out_channels, pool in ((c1, True), (c2, True), (c3, False), (c3, True), (c4, False), (c4, True)):
            layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)]
            layers += [nn.MaxPool2d(2, 2)] if pool else []
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(c4 * 6 * 4, hidden[0]),
            nn.ReLU(inplace=True),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(inplace=True),
            nn.Linear(hidden[1], 128),  # no ReLU after it: the reference's pre-activation embedding
        )

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        x = self.features(examples)  # [N, C, 6, 4]
        return self.embeddings(x.permute(0, 2, 3, 1).flatten(1))  # channels last, as the TF original


def log_mel_examples(audio: torch.Tensor, sample_rate_hz: int) -> tuple[torch.Tensor, torch.Tensor]:
    """audio [B, L] -> (examples [N, 1, 96, 64], owner [N] note index); short notes are zero-padded to 0.96 s."""
    audio = resample(audio.float(), sample_rate_hz, SAMPLE_RATE_HZ)
    min_samples = N_FFT + HOP * (EXAMPLE_FRAMES - 1)  # frames of a 512-point STFT without centring
    if audio.shape[1] < min_samples:
        audio = nn.functional.pad(audio, (0, min_samples - audio.shape[1]))
    window = torch.hann_window(WINDOW, periodic=True)
    spectrum = torch.stft(audio, N_FFT, HOP, WINDOW, window, center=False, return_complex=True).abs()  # [B, F, T]
    mel = AF.melscale_fbanks(N_FFT // 2 + 1, 125.0, 7500.0, N_MELS, SAMPLE_RATE_HZ, mel_scale="htk")
    log_mel = torch.log(torch.einsum("bft,fm->btm", spectrum, mel) + 0.01)  # [B, T, 64]
    count = log_mel.shape[1] // EXAMPLE_FRAMES
    examples = log_mel[:, : count * EXAMPLE_FRAMES].reshape(-1, 1, EXAMPLE_FRAMES, N_MELS)
    return examples, torch.arange(audio.shape[0]).repeat_interleave(count)


def _widths(state_dict: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    channels = tuple(state_dict[f"features.{i}.weight"].shape[0] for i in WIDTH_LAYERS)
    hidden = (state_dict["embeddings.0.weight"].shape[0], state_dict["embeddings.2.weight"].shape[0])
    return channels, hidden


def tiny_file() -> Path:
    """The tiny VGGish weight file in the weights cache (written once)."""
    return weight_files.seeded_file(
        "vggish",
        "vggish-tiny.pth",
        TINY_WIDTHS,
        TINY_SEED,
        lambda path: torch.save(VGGish(*TINY_WIDTHS).state_dict(), path),
    )


def load_vggish(weights: str) -> VGGish:
    """ "vggish" (release), "tiny", or a path / URL of a VGGish state dict -> the model in eval mode."""
    key = "metrics.vggish_weights"
    if weights == "vggish":
        path = weight_files.download(
            RELEASE_URL, weight_files.cache_dir("vggish") / "vggish-10086976.pth", "VGGish", key
        )
    elif weights == "tiny":
        path = tiny_file()
    else:
        path = weight_files.local_file(weights, "vggish", key)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        model = VGGish(*_widths(state_dict))
        model.load_state_dict(state_dict)
    except (RuntimeError, KeyError, EOFError, OSError) as e:
        raise weight_files.WeightsError(
            f"{key}={weights!r}: {path} is not a VGGish state dict ({str(e).splitlines()[0]})"
        ) from None
    return model.eval()


@torch.no_grad()
def vggish_embeddings(model: VGGish, audio: torch.Tensor, sample_rate_hz: int) -> torch.Tensor:
    """audio [B, L] -> [N, 128]: every 0.96 s example's embedding, note by note (N = B x examples
    per note; a note shorter than 0.96 s is one zero-padded example), as the FAD reference takes them."""
    return model(log_mel_examples(audio, sample_rate_hz)[0])
