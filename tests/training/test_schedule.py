import math

import pytest

from instrumentgen.config import ConfigError, load_config
from instrumentgen.training.engines import deepspeed_config
from instrumentgen.training.loop import micro_batch_rows
from instrumentgen.training.schedule import warmup_cosine


def test_warmup_is_linear_then_cosine_to_zero():
    factors = [warmup_cosine(step, 10, 110) for step in range(110)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == 1.0
    assert factors[60] == pytest.approx(0.5)  # half-way through the cosine
    assert warmup_cosine(110, 10, 110) == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert warmup_cosine(35, 10, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi * 25 / 100)))


def test_global_batch_splits_into_workers_and_accumulation():
    assert micro_batch_rows(32, 8, 1) == 4 and micro_batch_rows(32, 2, 4) == 4
    with pytest.raises(ConfigError, match=r"train.batch_size=30 does not split into 4 workers x 2 .*multiple of 8"):
        micro_batch_rows(30, 4, 2)


def test_deepspeed_config_follows_the_train_config():
    cfg = load_config("paper", ["train.zero_stage=2", "train.grad_accum=4", "train.grad_clip=0.5"]).train
    ds = deepspeed_config(cfg, micro_batch=1)
    assert ds["zero_optimization"] == {"stage": 2, "contiguous_gradients": True}
    assert deepspeed_config(load_config("paper", ["train.zero_stage=1"]).train, 1)["zero_optimization"] == {
        "stage": 1,
        "contiguous_gradients": False,
    }
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_micro_batch_size_per_gpu"] == 1
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["zero_allow_untested_optimizer"]  # a torch AdamW, so no C++ optimizer is compiled
