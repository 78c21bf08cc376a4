"""Pre-norm decoder: causal self-attention, cross-attention to condition tokens, feed-forward.

Generation feeds one step at a time through a `KVCache`: self-attention keys/values of past
steps are kept in preallocated tensors (written in place, never concatenated), and the
cross-attention keys/values of the condition tokens are computed once at the first step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from instrumentgen.config import ModelConfig


class LayerCache:
    """One layer's cache: self-attention keys/values [B, H, T_max, Dh] and cross-attention ones."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.cross: tuple[torch.Tensor, torch.Tensor] | None = None


class KVCache:
    """What one generation keeps between steps; `length` steps are filled so far."""

    def __init__(self, num_layers: int, max_steps: int):
        self.max_steps = max_steps
        self.length = 0
        self.layers = [LayerCache() for _ in range(num_layers)]


class Attention(nn.Module):
    """Multi-head attention through `scaled_dot_product_attention`; self or cross."""

    def __init__(self, cfg: ModelConfig, cross: bool):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.cross = cross
        self.query = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.key_value = nn.Linear(cfg.dim, 2 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.dropout = cfg.dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, H, T, D / H]."""
        batch, steps, dim = x.shape
        return x.view(batch, steps, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def _keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.key_value(source).chunk(2, dim=-1)
        return self._heads(keys), self._heads(values)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        cache: LayerCache | None = None,
        max_steps: int = 0,
        position: int = 0,
    ) -> torch.Tensor:
        """x [B, T, D]; memory [B, C, D] for cross-attention -> [B, T, D].

        With `cache`, x is the single step at `position` (T = 1): self-attention appends its keys
        and values and attends to all cached steps; cross-attention reuses the memory's.
        """
        query = self._heads(self.query(x))
        dropout = self.dropout if self.training else 0.0
        if self.cross:
            if cache is None:
                keys, values = self._keys_values(memory)
            else:
                if cache.cross is None:
                    cache.cross = self._keys_values(memory)
                keys, values = cache.cross
            attended = F.scaled_dot_product_attention(query, keys, values, dropout_p=dropout)
        elif cache is None:
            keys, values = self._keys_values(x)
            attended = F.scaled_dot_product_attention(query, keys, values, dropout_p=dropout, is_causal=True)
        else:
            keys, values = self._keys_values(x)
            if cache.keys is None:
                shape = (*keys.shape[:2], max_steps, keys.shape[-1])
                cache.keys, cache.values = keys.new_empty(shape), values.new_empty(shape)
            cache.keys[:, :, position] = keys[:, :, 0]
            cache.values[:, :, position] = values[:, :, 0]
            # A single query may see every cached step: no mask needed.
            attended = F.scaled_dot_product_attention(
                query, cache.keys[:, :, : position + 1], cache.values[:, :, : position + 1]
            )
        batch, _, steps, _ = attended.shape
        return self.out(attended.transpose(1, 2).reshape(batch, steps, -1))


class DecoderBlock(nn.Module):
    """x + SelfAttn(LN x); x + CrossAttn(LN x, condition); x + FFN(LN x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_self = nn.LayerNorm(cfg.dim)
        self.self_attention = Attention(cfg, cross=False)
        self.norm_cross = nn.LayerNorm(cfg.dim)
        self.cross_attention = Attention(cfg, cross=True)
        self.norm_ffn = nn.LayerNorm(cfg.dim)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ffn_mult * cfg.dim), nn.GELU(), nn.Linear(cfg.ffn_mult * cfg.dim, cfg.dim)
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        condition: torch.Tensor,
        cache: LayerCache | None = None,
        max_steps: int = 0,
        position: int = 0,
    ) -> torch.Tensor:
        attended = self.self_attention(self.norm_self(x), cache=cache, max_steps=max_steps, position=position)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.cross_attention(self.norm_cross(x), memory=condition, cache=cache))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))


class Transformer(nn.Module):
    """x [B, T, D], condition tokens [B, C, D] -> [B, T, D] (final LayerNorm applied)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def new_cache(self, max_steps: int) -> KVCache:
        return KVCache(len(self.blocks), max_steps)

    def forward(self, x: torch.Tensor, condition: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Without `cache`: the whole causal sequence. With it: one step (T = 1) at `cache.length`."""
        if cache is None:
            for block in self.blocks:
                x = block(x, condition)
            return self.norm(x)
        if x.shape[1] != 1 or cache.length >= cache.max_steps:
            raise ValueError(
                f"cached decoding takes one step at a time within {cache.max_steps} steps; "
                f"got {x.shape[1]} steps at position {cache.length}"
            )
        for block, layer_cache in zip(self.blocks, cache.layers):
            x = block(x, condition, layer_cache, cache.max_steps, cache.length)
        cache.length += 1
        return self.norm(x)
