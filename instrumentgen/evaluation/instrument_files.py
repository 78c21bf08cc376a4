"""What jobs.evaluate writes for one scored test instrument, under a model's folder `out`:

instruments/<name>.npz    its arrays (`InstrumentScores.ARRAYS`)
figures/<name>_tc.png     its TC matrix
figures/<name>_pitch.png  its pitch errors
instruments/<name>.json   its row, written last: the instrument is done when it exists
"""

from __future__ import annotations

import io

import numpy as np

from instrumentgen import storage
from instrumentgen.evaluation.table1 import InstrumentScores
from instrumentgen.metrics.aggregate import score_cell
from instrumentgen.metrics.plots import pitch_error_figure, tc_matrix_figure


def row_url(out: str, name: str) -> str:
    """Where instrument `name`'s JSON row is (its presence marks it scored)."""
    return storage.join(out, "instruments", f"{name}.json")


def write_figures(out: str, name: str, scores: InstrumentScores) -> None:
    """The instrument's TC matrix and pitch-error figures."""
    storage.write_bytes(
        storage.join(out, "figures", f"{name}_tc.png"),
        tc_matrix_figure(scores.tc_matrix, scores.pitches, scores.velocities, f"{name}: TC {scores.tc:.3f}"),
    )
    storage.write_bytes(
        storage.join(out, "figures", f"{name}_pitch.png"),
        pitch_error_figure(
            np.array(scores.pitches), scores.pitch_errors, f"{name}: MAD_pitch {score_cell(scores.mad_pitch)}"
        ),
    )


def write_record(out: str, name: str, scores: InstrumentScores) -> dict:
    """The instrument's arrays, then its JSON row (last); returns the row."""
    buffer = io.BytesIO()
    np.savez(buffer, **scores.arrays())
    storage.write_bytes(storage.join(out, "instruments", f"{name}.npz"), buffer.getvalue())
    row = scores.json_row()
    storage.write_json(row_url(out, name), row)
    return row
