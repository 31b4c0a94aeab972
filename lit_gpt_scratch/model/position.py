"""Position plug-ins. Contract: ``Position(d_model, n_head, block_size, **options)``.

A position plug-in acts at one or both of two places, and is the identity at the other:

- ``embed(x, pos)``: on the token embeddings, (B, T, C) -> (B, T, C) (learned absolute).
- ``rotate(q, k, pos)``: on each attention layer's queries and keys, (B, h, T, hs) (rotary).

``pos`` holds position ids, (T,) or (B, T): 0 at each sequence's first real token.
"""

from __future__ import annotations

import torch
from torch import nn


class Position(nn.Module):
    """Base class of the position plug-ins; also the identity at both places."""

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor):
        return q, k


class NoPosition(Position):
    """No positional signal at all (causal attention alone can infer order, NoPE)."""

    def __init__(self, d_model: int, n_head: int, block_size: int):
        super().__init__()


class LearnedPosition(Position):
    """GPT-2: a learned embedding per absolute position, added to the token embeddings."""

    def __init__(self, d_model: int, n_head: int, block_size: int):
        super().__init__()
        self.wpe = nn.Embedding(block_size, d_model)

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x + self.wpe(pos)  # (B, T, C) + (T, C) or (B, T, C)


class RotaryPosition(Position):
    """RoPE (Su et al.; Llama): rotate each (i, i + hs/2) pair of q and k by angle pos * f_i.

    Uses the "rotate half" layout of Llama and Hugging Face, so weights move between them as is.
    """

    def __init__(self, d_model: int, n_head: int, block_size: int, base: float = 10000.0):
        super().__init__()
        head_size = d_model // n_head
        if head_size % 2:
            raise ValueError(f"rotary positions need an even head size, got {head_size}")
        self.base = base
        inv_freq = base ** -(torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
        angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # (block_size, hs)
        # Not saved in checkpoints: derived from the shape and base.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def rotate(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor):
        cos = self.cos[pos].unsqueeze(-3)  # (1, T, hs) or (B, 1, T, hs): broadcasts over heads
        sin = self.sin[pos].unsqueeze(-3)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.float().chunk(2, dim=-1)
    rotated_half = torch.cat([-second, first], dim=-1)
    return (x.float() * cos + rotated_half * sin).type_as(x)
