"""The paper's measures (sections 3 and 4): TC, pitch (YIN, MAD_pitch), FAD, CLAP score; their
aggregates and figures."""
