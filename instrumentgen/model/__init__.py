"""The model: the delay pattern, the conditioners and the CLAP quantizer, the transformer with its KV
cache, `InstrumentLM`, and the cues a batch of notes is conditioned on."""
