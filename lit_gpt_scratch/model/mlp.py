"""Feed-forward plug-ins. Contract: ``MLP(d_model, **options)``, maps (B, T, d_model) to itself.

The output projection is named ``c_proj``: the GPT gives it the scaled residual init.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Base class of the MLP plug-ins (the type the GPT's ``mlp`` factory returns)."""


class GeluMLP(MLP):
    """GPT-2's MLP: d -> 4d -> GELU (tanh approximation, as GPT-2 used) -> d."""

    def __init__(self, d_model: int, hidden: int | None = None, bias: bool = True):
        super().__init__()
        hidden = hidden or 4 * d_model
        self.c_fc = nn.Linear(d_model, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class SwiGLU(MLP):
    """Llama's gated MLP: silu(x W_gate) * (x W_up), then W_down (here ``c_proj``).

    Default width is Llama's: 2/3 of 4d (same parameters as a 4d GELU MLP), rounded up to a
    multiple of ``multiple_of``.
    """

    def __init__(
        self, d_model: int, hidden: int | None = None, multiple_of: int = 256, bias: bool = False
    ):
        super().__init__()
        if hidden is None:
            hidden = int(2 * 4 * d_model / 3)
            hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
        self.gate = nn.Linear(d_model, hidden, bias=bias)
        self.up = nn.Linear(d_model, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.silu(self.gate(x)) * self.up(x))


class ReluSquaredMLP(MLP):
    """ReLU² (Primer, modded-nanogpt): d -> 4d -> relu(.)^2 -> d."""

    def __init__(self, d_model: int, hidden: int | None = None, bias: bool = False):
        super().__init__()
        hidden = hidden or 4 * d_model
        self.c_fc = nn.Linear(d_model, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())
