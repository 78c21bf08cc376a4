"""InstrumentLM: the paper's conditioned codec language model (section 2.2), read top to bottom.

    codes [B, K, N] --interleave--> [B, K, T]  (T = N + K - 1, codebook k delayed by k steps)
    input at step t = the tokens of step t - 1 (a `card` start token at t = 0), the K codebook
    embeddings summed, plus a sinusoidal position -> decoder (self-attention, cross-attention to
    the condition tokens of `Conditioners`) -> K linear heads -> logits [B, K, T, card]

Training minimises the cross-entropy of each codebook on its valid positions (the interleaving's
padding is never a target), averaged over the K codebooks. The CLAP quantizer learns by EMA,
not by gradient (`quantizer.py`); its commitment loss is reported beside the loss, not in it.
Generation decodes T steps with a KV cache, classifier-free guidance in one forward of the
doubled batch (conditional rows first, null-condition rows second) and top-k sampling from
counter-based random numbers (`sampling.py`), so a note's tokens depend only on its own seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from instrumentgen import storage
from instrumentgen.config import ModelConfig, config_hash
from instrumentgen.errors import UserError
from instrumentgen.model import patterns, sampling
from instrumentgen.model.conditioners import Conditioners
from instrumentgen.model.cues import Cues
from instrumentgen.model.transformer import Transformer

CHECKPOINT_FORMAT = 1
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class LMError(UserError):
    """A model checkpoint or a generation request that cannot be used; names the value and what is allowed."""


@dataclass
class LMOutput:
    """What a training forward gives: the loss and its parts, the logits, the CLAP codes."""

    loss: torch.Tensor  # scalar: mean of `ce_per_codebook`, what training minimises
    ce_per_codebook: torch.Tensor  # [K]
    # scalar: the CLAP quantizer's commitment loss ||x - sg(quantized)||^2, mean over its codebooks:
    # how far the codebooks are from the embeddings (no gradient: the input is frozen; 0 in the metadata model)
    rvq_loss: torch.Tensor
    logits: torch.Tensor  # [B, K, T, card]
    clap_codes: torch.Tensor | None = None  # [B, Q] long: the CLAP embeddings' RVQ codes (None without CLAP)


def sinusoidal_positions(
    first_step: int, steps: int, dim: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """[T, D] sine/cosine embedding of positions first_step.. (as MusicGen): no table to outgrow."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, device=device) / half)
    positions = torch.arange(first_step, first_step + steps, device=device, dtype=torch.float32)
    angles = positions[:, None] * frequencies[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def guided_logits(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, cfg_coef: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + cfg_coef * (cond - uncond), any shape."""
    return uncond_logits + (cond_logits - uncond_logits) * cfg_coef


def note_seeds(seed: int | torch.Tensor, batch: int) -> torch.Tensor:
    """[B] long per-note seeds: a tensor is taken as given; an int gives each row its own stream."""
    if isinstance(seed, torch.Tensor):
        if seed.shape != (batch,):
            raise LMError(f"seeds has shape {tuple(seed.shape)}; allowed: an int or a tensor of shape ({batch},)")
        return seed.long()
    return sampling.mix_seed(seed, torch.arange(batch))


def read_checkpoint(url: str) -> tuple[dict, ModelConfig]:
    """The file `InstrumentLM.save` wrote at `url` -> (its dict: format, config, state_dict, model_id; its
    ModelConfig). `LMError` in one line when the file is missing or is not such a checkpoint."""
    if not storage.exists(url):
        raise LMError(
            f"checkpoint={url!r} does not exist; give the path or URL of a file written by "
            "InstrumentLM.save (jobs.train exports one as <run>/model.pt)"
        )
    try:
        checkpoint = torch.load(io.BytesIO(storage.read_bytes(url)), map_location="cpu", weights_only=True)
        return checkpoint, ModelConfig(**checkpoint["config"])
    except Exception as e:  # a foreign or truncated file: say which and why, not torch's pickle essay
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'unreadable'}"
        raise LMError(
            f"checkpoint={url!r} is not an InstrumentLM checkpoint ({reason}); give a file written "
            "by InstrumentLM.save (jobs.train exports <run>/model.pt)"
        ) from None


class InstrumentLM(nn.Module):
    """The conditioned codec language model (module docstring): forward = training loss, generate = codes."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self._model_id: str | None = None  # see `model_id`
        if cfg.dim % cfg.num_heads:
            raise LMError(f"model.dim={cfg.dim} is not divisible by model.num_heads={cfg.num_heads}")
        self.cfg = cfg
        self.special = cfg.card  # start token and interleaving padding
        self.conditioners = Conditioners(cfg)
        # K tables of card + 1 entries (and K heads) stored as one: one lookup (one matmul) per step.
        self.embeddings = nn.Embedding(cfg.n_q * (cfg.card + 1), cfg.dim)
        self.register_buffer("table_offsets", torch.arange(cfg.n_q) * (cfg.card + 1), persistent=False)
        self.transformer = Transformer(cfg)
        self.heads = nn.Linear(cfg.dim, cfg.n_q * cfg.card, bias=False)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _embed(self, tokens: torch.Tensor, first_step: int) -> torch.Tensor:
        """tokens [B, K, T] (ids 0..card) at steps first_step.. -> [B, T, D]."""
        x = self.embeddings(tokens + self.table_offsets[:, None]).sum(dim=1)
        return x + sinusoidal_positions(first_step, tokens.shape[-1], self.cfg.dim, x.device).to(x.dtype)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, K, T, card]."""
        batch, steps, _ = hidden.shape
        return self.heads(hidden).view(batch, steps, self.cfg.n_q, self.cfg.card).transpose(1, 2)

    def _check_codes(self, codes: torch.Tensor) -> None:
        n_q, num_frames = codes.shape[1:]
        if n_q != self.cfg.n_q or num_frames > self.cfg.max_frames:
            raise LMError(
                f"codes of shape {tuple(codes.shape)}: allowed [B, {self.cfg.n_q}, N <= model.max_frames="
                f"{self.cfg.max_frames}]"
            )

    def forward(self, codes: torch.Tensor, cues: Cues) -> LMOutput:
        """codes [B, K, N] long (0..card-1), cues for B notes -> LMOutput.

        In training mode each sample drops its own family/source (`Conditioners.attribute_dropout`)
        and, with p = `cfg_dropout`, its whole condition (the CFG null, CLAP included).
        """
        self._check_codes(codes)
        batch, n_q, num_frames = codes.shape
        null = None
        if self.training:
            cues = self.conditioners.attribute_dropout(cues)
            null = torch.rand(batch, device=codes.device) < self.cfg.cfg_dropout
        condition, rvq_loss, clap_codes = self.conditioners(cues, null)
        targets = patterns.interleave(codes, self.special)  # [B, K, T]
        inputs = F.pad(targets[..., :-1], (1, 0), value=self.special)
        logits = self._logits(self.transformer(self._embed(inputs, 0), condition))
        valid = patterns.valid_mask(n_q, num_frames, codes.device)  # [K, T]
        ce = F.cross_entropy(logits.permute(0, 3, 1, 2).float(), targets, ignore_index=self.special, reduction="none")
        ce_per_codebook = (ce * valid).sum(dim=(0, 2)) / (valid.sum(dim=1) * batch)
        return LMOutput(ce_per_codebook.mean(), ce_per_codebook, rvq_loss.detach(), logits, clap_codes)

    @torch.inference_mode()
    def generate(
        self,
        cues: Cues,
        num_frames: int,
        cfg_coef: float = 3.0,
        top_k: int = 250,
        temperature: float = 1.0,
        seeds: int | torch.Tensor = 0,
        use_cache: bool = True,
        cfg_batched: bool = True,
    ) -> torch.Tensor:
        """cues for B notes -> codes [B, K, num_frames] long.

        cfg_coef: 1 is the conditional model alone (no null pass); otherwise the conditional and
        null conditions run as one doubled batch (`cfg_batched`, default) or as two forwards.
        seeds: an int, or [B] long per-note seeds (a note's tokens then do not depend on its batch).
        use_cache: False recomputes the whole prefix at every step (the reference for tests and
        benchmarks).

        Generation never trains: it runs in eval mode (no dropout; the CLAP quantizer only reads
        its codebooks, never gathers from other workers) whatever the model's mode, restored after.
        """
        if not self.training:
            return self._generate(cues, num_frames, cfg_coef, top_k, temperature, seeds, use_cache, cfg_batched)
        nn.Module.train(self, False)  # not self.train(): the weights do not change, model_id stays
        try:
            return self._generate(cues, num_frames, cfg_coef, top_k, temperature, seeds, use_cache, cfg_batched)
        finally:
            nn.Module.train(self, True)

    def _generate(
        self,
        cues: Cues,
        num_frames: int,
        cfg_coef: float,
        top_k: int,
        temperature: float,
        seeds: int | torch.Tensor,
        use_cache: bool,
        cfg_batched: bool,
    ) -> torch.Tensor:
        """`generate` in eval mode."""
        if not 1 <= num_frames <= self.cfg.max_frames:
            raise LMError(
                f"num_frames={num_frames} is not allowed; allowed: 1..{self.cfg.max_frames} (model.max_frames)"
            )
        batch, n_q = len(cues), self.cfg.n_q
        steps = patterns.interleaved_length(num_frames, n_q)
        device = next(self.parameters()).device
        cues, seeds = cues.to(device), note_seeds(seeds, batch).to(device)
        guided = cfg_coef != 1.0
        condition = self.conditioners(cues)[0]
        if guided:
            null_condition = self.conditioners(cues, torch.ones(batch, dtype=torch.bool, device=device))[0]
            conditions = [torch.cat([condition, null_condition])] if cfg_batched else [condition, null_condition]
        else:
            conditions = [condition]
        caches = [self.transformer.new_cache(steps) for _ in conditions] if use_cache else [None] * len(conditions)
        valid = patterns.valid_mask(n_q, num_frames, device)
        sequence = torch.full((batch, n_q, steps + 1), self.special, dtype=torch.long, device=device)  # step 0: start
        draws = sampling.uniforms(seeds, steps, n_q)  # [B, T, K]
        for step in range(steps):
            logits = []
            for cond, cache in zip(conditions, caches):
                rows = cond.shape[0] // batch
                if cache is None:
                    tokens = sequence[:, :, : step + 1].repeat(rows, 1, 1)
                    hidden = self.transformer(self._embed(tokens, 0), cond)[:, -1:]
                else:
                    tokens = sequence[:, :, step : step + 1].repeat(rows, 1, 1)
                    hidden = self.transformer(self._embed(tokens, step), cond, cache)
                logits.append(self._logits(hidden)[:, :, 0].float())  # [rows * B, K, card]
            logits = torch.cat(logits)
            if guided:
                logits = guided_logits(logits[:batch], logits[batch:], cfg_coef)
            next_tokens = sampling.sample_top_k(logits, draws[:, step], top_k, temperature)
            sequence[:, :, step + 1] = torch.where(valid[:, step], next_tokens, self.special)
        return patterns.deinterleave(sequence[:, :, 1:])

    @property
    def model_id(self) -> str:
        """`instrumentlm-<config hash>-<weights hash>`: names the exact weights in manifests.

        Hashing every weight takes a while, so it is computed once and kept until the weights can
        have changed: `load_state_dict`, `train()` / `eval()` (training moves them between the
        two) and moves of device or dtype clear it.
        """
        if self._model_id is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
            self._model_id = f"instrumentlm-{config_hash(dataclasses.asdict(self.cfg))}-{digest.hexdigest()[:10]}"
        return self._model_id

    def load_state_dict(self, *args, **kwargs):
        self._model_id = None
        return super().load_state_dict(*args, **kwargs)

    def train(self, mode: bool = True) -> "InstrumentLM":
        self._model_id = None
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self._model_id = None
        return super()._apply(fn, recurse)

    def save(self, url: str, dtype: str = "fp32") -> str:
        """Write the consolidated inference checkpoint (config + weights) to a path or fsspec URL, atomically."""
        if dtype not in DTYPES:
            raise LMError(f"dtype={dtype!r} is not allowed; allowed: {', '.join(DTYPES)}")
        state = {
            name: tensor.detach().to("cpu", DTYPES[dtype] if tensor.is_floating_point() else tensor.dtype)
            for name, tensor in self.state_dict().items()
        }
        buffer = io.BytesIO()
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "config": dataclasses.asdict(self.cfg),
                "state_dict": state,
                "model_id": self.model_id,
            },
            buffer,
        )
        storage.write_bytes(url, buffer.getvalue())
        return url

    @classmethod
    def load(cls, url: str, device: str = "cpu") -> "InstrumentLM":
        """The model saved by `save` at `url` (any ZeRO stage or worker count), in eval mode, fp32."""
        checkpoint, cfg = read_checkpoint(url)
        model = cls(cfg)
        state = checkpoint["state_dict"]
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        return model.to(device).eval()
