"""Scores of many instruments into one figure, and a score into a table cell (Table 1 and Table 2 reports)."""

from __future__ import annotations

import numpy as np


def finite_mean(values: list[float | None]) -> float | None:
    """Mean of the finite values; None when there are none (e.g. every note unvoiced)."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def score_cell(value: float | None, missing: str = "n/a") -> str:
    """A score for a table or a title: 3 decimals, `missing` when there is none."""
    return missing if value is None or not np.isfinite(value) else f"{value:.3f}"
