"""Pretrained models: the DAC codec and CLAP wrappers, weight files by name, path or URL, and
`load_models`, the one loader of LM + codec + CLAP."""
