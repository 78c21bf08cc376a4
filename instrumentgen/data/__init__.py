"""Data: NSynth readers (json/wav, TFRecord), the token shard format and its resumable writer, the
preprocessing stages as plain functions, and synthetic NSynth-format data for tests and the demo."""
