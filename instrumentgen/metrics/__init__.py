"""The paper's evaluation (sections 3 and 4): TC, pitch (YIN, MAD_pitch), FAD, CLAP score."""
