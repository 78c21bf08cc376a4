"""Figures a person would rather look at than read: PNG bytes, so any fsspec URL can take them."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def tc_matrix_figure(matrix: np.ndarray, pitches: list[int], velocities: list[int], title: str) -> bytes:
    """Heatmap of the mean |y_i - y_j| of every pair of notes of one instrument, notes in slot order."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    image = ax.imshow(matrix, cmap="magma", interpolation="nearest")
    ticks = np.linspace(0, len(pitches) - 1, min(len(pitches), 8)).round().astype(int)
    labels = [f"{pitches[i]}/{velocities[i]}" for i in ticks]
    ax.set_xticks(ticks, labels, rotation=45, fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set(title=title, xlabel="note (MIDI pitch / velocity)", ylabel="note")
    fig.colorbar(image, ax=ax, label="mean |y_i - y_j| (liftered log mel)")
    return _png(fig)


def pitch_error_figure(pitches: np.ndarray, errors_semitones: np.ndarray, title: str) -> bytes:
    """Pitch error (semitones) against MIDI pitch for every voiced note, with the ±0.5 semitone band."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    voiced = np.isfinite(errors_semitones)
    ax.axhspan(-0.5, 0.5, color="tab:green", alpha=0.12, label="within a quarter tone")
    ax.scatter(pitches[voiced], errors_semitones[voiced], s=10, alpha=0.7)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(
        xlim=(20, 109),
        xlabel="labelled MIDI pitch",
        ylabel="f0 error (semitones)",
        title=f"{title} ({int((~voiced).sum())} unvoiced)",
    )
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)


def loss_figure(history: list[dict], title: str) -> bytes:
    """Training loss (per logging window) and validation loss against the optimizer step."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.plot([row["step"] for row in history], [row["loss"] for row in history], label="train loss (window mean)")
    valid = [row for row in history if row.get("valid_loss") is not None and np.isfinite(row["valid_loss"])]
    if valid:
        ax.plot([row["step"] for row in valid], [row["valid_loss"] for row in valid], "o-", label="validation loss")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy (nats, mean of 4 codebooks)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def tc_per_prompt_figure(
    names: list[str], tc_values: list[float], tc_without_selection: list[float], title: str
) -> bytes:
    """TC of each prompt's instrument (bars), with the TC plain generation gave (dots) where they differ."""
    fig, ax = plt.subplots(figsize=(max(6.5, 0.22 * len(names) + 2), 4.5))
    x = np.arange(len(names))
    ax.bar(x, tc_values, color="tab:blue", label="TC (kept notes)")
    ax.scatter(x, tc_without_selection, color="black", s=12, zorder=3, label="TC without selection")
    ax.set_xticks(x, [n if len(n) <= 28 else n[:27] + "…" for n in names], rotation=75, ha="right", fontsize=7)
    ax.set(ylabel="TC (mean |y_i - y_j|) ↓", title=title)
    ax.legend(fontsize=8)
    return _png(fig)


def cue_loss_figure(losses: dict[str, float], title: str) -> bytes:
    """Bars of the teacher-forced loss of the same notes under each cue (the right one first)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    names = list(losses)
    bars = ax.bar(names, [losses[n] for n in names], color=["tab:green"] + ["tab:red"] * (len(names) - 1))
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set(ylabel="cross-entropy (nats, mean of 4 codebooks)", title=title)
    ax.tick_params(axis="x", labelsize=8)
    return _png(fig)
