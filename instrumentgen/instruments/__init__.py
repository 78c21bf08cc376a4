"""Instruments: a cue -> 440 notes (generation), slices of one instrument across workers,
consistency selection, preset exports, the batch renderer, prompt files and the library."""
