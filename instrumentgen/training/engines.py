"""Two ways to run the optimizer step across workers, behind one interface.

`DeepSpeedEngine` (`train.strategy: deepspeed`): ZeRO stage, precision, clipping and gradient
accumulation from the config; it is given a torch AdamW and a LambdaLR, so no DeepSpeed C++
optimizer is compiled, and on CPU workers its shared-memory all-reduce is not built either
(`skip_cpu_inference_all_reduce`). `DDPEngine` (`train.strategy: ddp`): torch DistributedDataParallel with
the same optimizer and schedule, for small runs and as the baseline of the benchmark.

Both are an `Engine` (the methods the loop uses). They are told their rank and device; neither
knows about Ray. The CLAP quantizer's EMA buffers are kept identical across workers by the
quantizer itself (`model/quantizer.py`), under both.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from instrumentgen.config import TrainConfig
from instrumentgen.model.cues import Cues
from instrumentgen.model.lm import InstrumentLM, LMOutput
from instrumentgen.training.schedule import warmup_cosine

DEEPSPEED_TAG = "deepspeed"
DDP_STATE = "ddp_state.pt"


class Engine(Protocol):
    """What the training loop needs of an engine."""

    module: InstrumentLM  # the bare model (its buffers and weights on this worker)

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...  # of the model's floating inputs

    @property
    def lr(self) -> float: ...

    def forward(self, codes: torch.Tensor, cues: Cues) -> LMOutput: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> torch.Tensor | float | None:
        """Once per micro-batch; the optimizer steps every `grad_accum` calls -> grad norm then (left on the
        device: the loop reads it once per logging window), else None."""

    def save(self, folder: str) -> None:
        """This rank's part of the training state (weights, optimizer, schedule) into `folder`."""

    def load(self, folder: str) -> None: ...

    def consolidated_state_dict(self) -> dict[str, torch.Tensor]:
        """Every rank calls it (a collective under ZeRO-3): the full fp32 state, buffers included."""


def decayed_parameter_names(model: nn.Module) -> set[str]:
    """The weight matrices of the nn.Linear layers: the only parameters AdamW decays.

    Not lookup tables, codebooks, null embeddings, norms or biases (chosen by module type, not name).
    """
    return {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def optimizer_and_schedule(model: nn.Module, cfg: TrainConfig):
    """AdamW at `cfg.lr`, weight decay on `decayed_parameter_names` only, + warm-up/cosine LambdaLR."""
    decayed = decayed_parameter_names(model)
    decay = [p for name, p in model.named_parameters() if name in decayed]
    no_decay = [p for name, p in model.named_parameters() if name not in decayed]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        fused=True,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps)
    )
    return optimizer, schedule


def deepspeed_config(cfg: TrainConfig, micro_batch: int) -> dict:
    """The DeepSpeed JSON config of `cfg` for `micro_batch` rows per worker and micro-step.

    Gradients are copied into a contiguous buffer during backward only from stage 2 on, where they
    are partitioned and the copy avoids fragmentation; at stage 1 every rank holds all gradients
    and the copy is pure cost (14 ms of a 200 ms step of the benchmark's 5M-parameter model on CPU).
    """
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage, "contiguous_gradients": cfg.zero_stage >= 2},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16", "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,  # a torch AdamW: nothing to compile
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


def skip_cpu_inference_all_reduce() -> None:
    """On DeepSpeed's CPU accelerator, do not JIT-compile its shared-memory all-reduce op.

    Its communication backend builds `deepspeed_shm_comm` (C++, about 45 s on 2 cores, once per
    machine into TORCH_EXTENSIONS_DIR) when it starts, but uses it only in `inference_all_reduce`
    (tensor-parallel inference); training's collectives are torch.distributed's (gloo). DeepSpeed
    builds an op only if `deepspeed.ops.__compatible_ops__` (the dict it keeps editable for this)
    says it can. GPU accelerators have no such op and are left alone.
    """
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class DeepSpeedEngine:
    """`train.strategy: deepspeed`: ZeRO stage, precision, clipping, accumulation from the config."""

    def __init__(self, model: InstrumentLM, cfg: TrainConfig, micro_batch: int):
        import deepspeed

        skip_cpu_inference_all_reduce()
        optimizer, schedule = optimizer_and_schedule(model, cfg)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=schedule, config=deepspeed_config(cfg, micro_batch)
        )
        self.module: InstrumentLM = self.engine.module
        self.zero_stage = cfg.zero_stage

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def forward(self, codes: torch.Tensor, cues: Cues) -> LMOutput:
        return self.engine(codes, cues)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> torch.Tensor | float | None:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        return self.engine.get_global_grad_norm() if boundary else None

    @property
    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def save(self, folder: str) -> None:
        self.engine.save_checkpoint(folder, tag=DEEPSPEED_TAG)  # every rank writes its own ZeRO partition

    def load(self, folder: str) -> None:
        path, _ = self.engine.load_checkpoint(folder, tag=DEEPSPEED_TAG)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state under {folder}/{DEEPSPEED_TAG}")

    def consolidated_state_dict(self) -> dict[str, torch.Tensor]:
        import deepspeed

        params = list(self.module.parameters()) if self.zero_stage == 3 else []
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=bool(params)):
            return {k: v.detach().float().cpu().clone() for k, v in self.module.state_dict().items()}


class DDPEngine:
    """`train.strategy: ddp`: torch DistributedDataParallel (one process: the bare model) on `device`."""

    def __init__(self, model: InstrumentLM, cfg: TrainConfig, rank: int, world_size: int, device: torch.device):
        if device.type == "cuda":
            torch.cuda.set_device(device)
        model = model.to(device)
        if world_size > 1:
            # broadcast_buffers=False: DDP would copy rank 0's buffers into every replica before each
            # forward; the quantizer keeps its EMA buffers identical itself (as it must under DeepSpeed,
            # which has no such broadcast), so the copy would only cost time.
            device_ids = [device] if device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
        else:
            self.wrapped = model
        self.module: InstrumentLM = model
        self.optimizer, self.schedule = optimizer_and_schedule(self.module, cfg)
        self.cfg, self.rank = cfg, rank
        self.micro_steps = 0

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def _boundary(self) -> bool:
        return (self.micro_steps + 1) % self.cfg.grad_accum == 0

    def forward(self, codes: torch.Tensor, cues: Cues) -> LMOutput:
        if self._boundary() or not hasattr(self.wrapped, "no_sync"):
            return self.wrapped(codes, cues)
        with self.wrapped.no_sync():  # gradients are all-reduced on the boundary micro-step only
            return self.wrapped(codes, cues)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.cfg.grad_accum).backward()

    def step(self) -> torch.Tensor | None:
        boundary = self._boundary()
        self.micro_steps += 1
        if not boundary:
            return None
        norm = nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip or float("inf"))
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def save(self, folder: str) -> None:
        if self.rank == 0:  # replicas are identical: one copy
            torch.save(
                {
                    "model": self.module.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "schedule": self.schedule.state_dict(),
                    "micro_steps": self.micro_steps,
                },
                os.path.join(folder, DDP_STATE),
            )

    def load(self, folder: str) -> None:
        state = torch.load(os.path.join(folder, DDP_STATE), map_location=self.device, weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.micro_steps = state["micro_steps"]

    def consolidated_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().clone() for k, v in self.module.state_dict().items()}


def make_engine(
    model: InstrumentLM, cfg: TrainConfig, micro_batch: int, rank: int, world_size: int, device: torch.device
) -> Engine:
    """The engine of `train.strategy` for this worker (`rank` of `world_size`, on `device`)."""
    if cfg.strategy == "deepspeed":
        return DeepSpeedEngine(model, cfg, micro_batch)
    return DDPEngine(model, cfg, rank, world_size, device)
