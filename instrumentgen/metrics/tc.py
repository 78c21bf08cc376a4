"""Timbral consistency (TC), the paper's equations 1-2, in torch: differentiable and batched.

For an instrument X [K, L] (K notes), each note x_k becomes, at each scale s,

    y_k = D^-1 mask_m D log(B |STFT(x_k)|^p + eps)        [M, frames]

and TC(X) = sum over pairs i < j and scales s of ||y_i - y_j||_1 (eq. 1). Constants (the paper's
values, `tc_*` keys of `MetricsConfig` to change them):

    STFT       n_fft 2048, hop 512, periodic Hann window of n_fft, centred (reflect padding)
    p          1: magnitude, not power
    B          M = 80-band mel filterbank, Slaney mel scale and Slaney area norm, 0 Hz .. sr/2
    log        natural log of (mel + eps), eps = 1e-5 (the paper leaves it open; named here)
    D          orthonormal DCT-II over the M bands; mask keeps the first m = 13 coefficients;
               D^-1 = D^T (orthonormal), so D^-1 mask D is the projection `lifter_matrix`
    scales     S = len(n_ffts) (the paper: S = 1)

`tc` returns the plain sum of eq. 1 and the normalised value: the mean over pairs of the mean
absolute difference over the M x frames values, averaged over scales, which is the scale of the
paper's numbers (ground truth about 1.05).

Pairs without a pair loop: for one value position, the sum over pairs of |a_i - a_j| equals
sum_k (2k - K + 1) a_(k) over the values sorted ascending, so each position costs one sort of K
values: O(K log K) time and O(K x positions) memory, against O(K^2 x positions) for all pair
differences (96,580 pairs of 27,600 values for a 440-note instrument of 4 s notes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio.functional as AF

from instrumentgen.errors import UserError

EPS = 1e-5


class TCError(UserError):
    """Notes that TC cannot compare; the message says what is wrong and what is allowed."""


@dataclass(frozen=True)
class TCScale:
    """One STFT / mel / MFCC resolution of the TC measure (eq. 2)."""

    n_fft: int = 2048
    hop: int = 512
    n_mels: int = 80
    n_mfcc: int = 13


@dataclass
class TCResult:
    """TC of one instrument: the plain pairwise sum, its normalised mean, and the number of pairs."""

    total: torch.Tensor  # scalar: eq. 1, summed over pairs and scales
    normalised: torch.Tensor  # scalar: mean over pairs of the mean |y_i - y_j|, averaged over scales
    num_pairs: int


def scales_from_config(metrics_cfg) -> list[TCScale]:
    """`cfg.metrics` (one list entry per scale) -> TC scales."""
    lists = (metrics_cfg.tc_n_fft, metrics_cfg.tc_hop, metrics_cfg.tc_mels, metrics_cfg.tc_mfccs)
    if len({len(values) for values in lists}) != 1:
        raise TCError(
            f"metrics.tc_n_fft, tc_hop, tc_mels, tc_mfccs have lengths {[len(v) for v in lists]}; "
            "allowed: one entry per scale in each"
        )
    return [TCScale(*values) for values in zip(*lists)]


def lifter_matrix(n_mels: int, n_mfcc: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """[M, M] = D^T mask D: orthonormal DCT-II, keep the first `n_mfcc` coefficients, invert."""
    bands = torch.arange(n_mels, dtype=torch.float64, device=device)
    dct = torch.cos(torch.pi / n_mels * (bands[None, :] + 0.5) * bands[:, None])  # [coefficient, band]
    dct[0] *= 1 / torch.sqrt(torch.tensor(2.0, dtype=torch.float64))
    dct *= torch.sqrt(torch.tensor(2.0 / n_mels, dtype=torch.float64))
    kept = dct[:n_mfcc]
    return (kept.T @ kept).to(dtype)


def liftered_log_mel(
    audio: torch.Tensor, sample_rate_hz: int, scale: TCScale, power: float = 1.0, eps: float = EPS, chunk: int = 32
) -> torch.Tensor:
    """audio [K, L] -> y [K, M, frames] (eq. 2), `chunk` notes at a time: the spectra of a whole
    instrument (440 x 1025 x 345 values) would not stay in cache, which halves the STFT's speed."""
    return torch.cat([_liftered_log_mel(part, sample_rate_hz, scale, power, eps) for part in audio.split(chunk)])


def _liftered_log_mel(
    audio: torch.Tensor, sample_rate_hz: int, scale: TCScale, power: float, eps: float
) -> torch.Tensor:
    window = torch.hann_window(scale.n_fft, periodic=True, dtype=audio.dtype, device=audio.device)
    spectrum = torch.stft(
        audio, scale.n_fft, scale.hop, window=window, center=True, pad_mode="reflect", return_complex=True
    ).abs()  # [K, F, frames]
    if power != 1.0:
        spectrum = spectrum.pow(power)
    mel = (
        AF.melscale_fbanks(
            scale.n_fft // 2 + 1,
            0.0,
            sample_rate_hz / 2,
            scale.n_mels,
            sample_rate_hz,
            norm="slaney",
            mel_scale="slaney",
        )
        .to(audio.dtype)
        .to(audio.device)
    )  # [F, M]
    log_mel = torch.log(torch.matmul(mel.T, spectrum) + eps)  # [K, M, frames], no transpose of the spectrum
    return torch.matmul(lifter_matrix(scale.n_mels, scale.n_mfcc, audio.dtype, audio.device), log_mel)


def pairwise_l1_sum(values: torch.Tensor) -> torch.Tensor:
    """values [K, ...] -> scalar: sum over i < j of sum |values_i - values_j| (sort identity, no pair loop)."""
    count = values.shape[0]
    # Sorted in the values' own dtype (the order is the same in float64), summed in float64: the
    # weighted sum of sorted values cancels heavily (weights -K+1 .. K-1).
    ranked = torch.sort(values.reshape(count, -1), dim=0).values.double()
    weights = 2 * torch.arange(count, dtype=torch.float64, device=values.device) - count + 1
    return (weights @ ranked).sum().to(values.dtype)


def check_notes(notes: torch.Tensor | list[torch.Tensor], sample_rate_hz: int | list[int]) -> tuple[torch.Tensor, int]:
    """Notes [K, L] (or K 1-D tensors) and their rate(s) -> (audio [K, L], rate); `TCError` if not comparable."""
    rates = sample_rate_hz if isinstance(sample_rate_hz, (list, tuple)) else [sample_rate_hz]
    if len(set(rates)) != 1:
        raise TCError(
            f"notes have sample rates {sorted(set(rates))}; allowed: one rate for every note (resample first)"
        )
    if isinstance(notes, (list, tuple)):
        lengths = sorted({len(note) for note in notes})
        if len(lengths) > 1:
            raise TCError(
                f"notes have lengths {lengths[:5]}{'...' if len(lengths) > 5 else ''} samples; "
                "allowed: one length for every note (crop or pad first)"
            )
        notes = torch.stack(list(notes)) if notes else torch.zeros(0, 0)
    if notes.dim() != 2:
        raise TCError(f"notes of shape {tuple(notes.shape)}; allowed: [K, L] (K notes of L samples)")
    if notes.shape[0] < 2:
        raise TCError(f"{notes.shape[0]} note(s); allowed: at least 2 notes (TC compares pairs)")
    if not torch.isfinite(notes).all():
        bad = (~torch.isfinite(notes)).any(dim=1).nonzero().flatten().tolist()
        raise TCError(f"notes {bad[:10]} hold NaN or inf; allowed: finite audio")
    return notes, int(rates[0])


def tc_features(
    notes: torch.Tensor | list[torch.Tensor],
    sample_rate_hz: int | list[int],
    scales: list[TCScale] | None = None,
    power: float = 1.0,
    eps: float = EPS,
) -> list[torch.Tensor]:
    """Notes [K, L] (checked by `check_notes`) -> y [K, M, frames] (eq. 2) of each scale: what both
    `tc_of_features` and `l1_matrix` read, computed once when a caller wants both."""
    audio, rate = check_notes(notes, sample_rate_hz)
    return [liftered_log_mel(audio, rate, scale, power, eps) for scale in scales or [TCScale()]]


def tc_of_features(features: list[torch.Tensor]) -> TCResult:
    """y [K, ...] of each scale (K >= 2 notes) -> `TCResult` (eq. 1 and its normalised mean)."""
    count = features[0].shape[0]
    num_pairs = count * (count - 1) // 2
    totals = [pairwise_l1_sum(y) for y in features]
    normalised = [total / (num_pairs * y[0].numel()) for total, y in zip(totals, features)]
    return TCResult(torch.stack(totals).sum(), torch.stack(normalised).mean(), num_pairs)


def l1_matrix(y: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """y [K, ...] -> [K, K] mean |y_i - y_j| for every pair (the heatmap of one instrument); chunked `cdist`."""
    with torch.no_grad():
        flat = y.flatten(1)
        rows = [torch.cdist(flat[i : i + chunk], flat, p=1) for i in range(0, len(flat), chunk)]
    return torch.cat(rows) / flat.shape[1]


def tc(
    notes: torch.Tensor | list[torch.Tensor],
    sample_rate_hz: int | list[int],
    scales: list[TCScale] | None = None,
    power: float = 1.0,
    eps: float = EPS,
) -> TCResult:
    """TC of one instrument: notes [K, L] at `sample_rate_hz` -> `TCResult` (differentiable in the notes)."""
    return tc_of_features(tc_features(notes, sample_rate_hz, scales, power, eps))


def tc_matrix(notes: torch.Tensor, sample_rate_hz: int, scale: TCScale = TCScale(), power: float = 1.0) -> torch.Tensor:
    """[K, K] mean |y_i - y_j| for every pair of notes [K, L], at one scale."""
    return l1_matrix(tc_features(notes, sample_rate_hz, [scale], power)[0])
