"""Evaluation: the paper's Table 1 for checkpoints on an NSynth-format test set."""
