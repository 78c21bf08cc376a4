"""`load_models`: the one place that loads the LM, the DAC codec and CLAP for a job or a replica.

Preprocessing (no LM), rendering, serving, evaluation and the `instrumentgen generate` command
all call it, so a weight URL, a device or a missing file is handled the same way everywhere.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple

from instrumentgen.config import Config
from instrumentgen.errors import UserError

if TYPE_CHECKING:
    from instrumentgen.model.lm import InstrumentLM
    from instrumentgen.pretrained.clap import Clap
    from instrumentgen.pretrained.codec import Codec


class Models(NamedTuple):
    """What `load_models` returns: unpack as `lm, codec, clap = load_models(...)`."""

    lm: "InstrumentLM | None"  # None when no checkpoint was given
    codec: "Codec"
    clap: "Clap | None"  # None when not needed (see `load_models`)


def load_models(cfg: Config, checkpoint: str | None, device: str | None = None, clap: bool | None = None) -> Models:
    """The LM at `checkpoint` (None: no LM), the codec of `cfg.codec` and the CLAP of `cfg.clap`.

    `device`: where all three go; None keeps each section's own (`cfg.codec.device` for the LM
    and the codec, `cfg.clap.device` for CLAP). `clap`: True/False load CLAP or not; None loads
    it when the LM conditions on CLAP, or always when there is no LM (preprocessing, evaluation
    of ground truth). Weight files are checked before any model is built, so a missing one fails
    in seconds with a `WeightsError` naming the file and its config key.
    """
    from instrumentgen.model.lm import InstrumentLM
    from instrumentgen.pretrained.clap import Clap
    from instrumentgen.pretrained.codec import Codec

    codec_cfg, clap_cfg = cfg.codec, cfg.clap
    if device is not None:
        codec_cfg, clap_cfg = (
            dataclasses.replace(codec_cfg, device=device),
            dataclasses.replace(clap_cfg, device=device),
        )
    lm = None if checkpoint is None else InstrumentLM.load(checkpoint, codec_cfg.device)
    codec = Codec.load(codec_cfg)
    if clap is None:
        clap = lm is None or lm.cfg.conditioning == "clap"
    return Models(lm, codec, Clap.load(clap_cfg) if clap else None)


class DeviceError(UserError):
    """GPUs were asked for but torch sees none: the message names the key, torch's CUDA and the driver."""


def device_for(num_gpus: float, key: str, cpu_device: str = "cpu") -> str:
    """ "cuda" when `num_gpus` > 0, else `cpu_device`; `DeviceError` when GPUs are asked for and torch has none.

    An actor given a GPU by Ray that cannot use it (a driver older than the one torch's CUDA
    needs, or a CPU-only wheel) would otherwise run on the CPU, tens of times slower, silently.
    """
    import torch

    if num_gpus <= 0:
        return cpu_device
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU-only wheel)"
        raise DeviceError(
            f"{key}={num_gpus:g} but torch sees no CUDA device (torch {torch.__version__}, built for CUDA {built}; "
            f"the NVIDIA driver must support that CUDA version, see docs/cluster.md); set {key}=0 to run on CPU"
        )
    return "cuda"
