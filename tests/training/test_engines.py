import subprocess
import sys

import torch

from instrumentgen.config import load_config
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.training.engines import optimizer_and_schedule

BLOCK_DECAYED = [
    "cross_attention.key_value.weight",
    "cross_attention.out.weight",
    "cross_attention.query.weight",
    "ffn.0.weight",
    "ffn.2.weight",
    "self_attention.key_value.weight",
    "self_attention.out.weight",
    "self_attention.query.weight",
]
BLOCK_NOT_DECAYED = [
    "ffn.0.bias",
    "ffn.2.bias",
    "norm_cross.bias",
    "norm_cross.weight",
    "norm_ffn.bias",
    "norm_ffn.weight",
    "norm_self.bias",
    "norm_self.weight",
]
CONDITIONERS = ["family", "pitch", "source", "velocity"]


def test_weight_decay_only_on_linear_weight_matrices():
    cfg = load_config("tiny")
    model = InstrumentLM(cfg.model)
    optimizer, _ = optimizer_and_schedule(model, cfg.train)
    names = {id(p): name for name, p in model.named_parameters()}
    groups = {group["weight_decay"]: sorted(names[id(p)] for p in group["params"]) for group in optimizer.param_groups}
    blocks = [f"transformer.blocks.{i}." for i in range(2)]
    assert groups[cfg.train.weight_decay] == sorted(
        [
            "conditioners.clap.proj.weight",
            *(f"conditioners.{c}.proj.weight" for c in CONDITIONERS),
            "heads.weight",
            *(b + n for b in blocks for n in BLOCK_DECAYED),
        ]
    )
    assert groups[0.0] == sorted(
        [
            "conditioners.clap.null",
            "conditioners.clap.proj.bias",
            *(f"conditioners.{c}.lut.weight" for c in CONDITIONERS),
            *(f"conditioners.{c}.proj.bias" for c in CONDITIONERS),
            "embeddings.weight",
            *(b + n for b in blocks for n in BLOCK_NOT_DECAYED),
            "transformer.norm.bias",
            "transformer.norm.weight",
        ]
    )
    # the codebooks are not parameters at all: EMA buffers
    assert "conditioners.clap.rvq.codebooks" in dict(model.named_buffers())
    assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))
    assert isinstance(optimizer, torch.optim.AdamW)


SHM_BUILD = """
import os, sys
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
os.environ["TORCH_EXTENSIONS_DIR"] = sys.argv[2]
from instrumentgen.config import load_config
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.training.engines import DeepSpeedEngine

engine = DeepSpeedEngine(InstrumentLM(load_config("tiny").model), load_config("tiny").train, 4)
print(sorted(os.listdir(sys.argv[2])) if os.path.isdir(sys.argv[2]) else [])
"""


def test_a_deepspeed_engine_on_cpu_compiles_no_op(tmp_path):
    """A fresh TORCH_EXTENSIONS_DIR stays empty after DeepSpeed starts on the CPU accelerator. With
    `skip_cpu_inference_all_reduce` made a no-op, the same script compiled `deepspeed_shm_comm` into it
    (36 s on this 2-core machine), the first DeepSpeed run of every fresh clone."""
    from serve.local import free_port

    done = subprocess.run(
        [sys.executable, "-c", SHM_BUILD, str(free_port()), str(tmp_path / "ext")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
