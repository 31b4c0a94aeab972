"""Optimizers that LitGPT's param groups plug into (chosen in YAML as ``model.optimizer``)."""

from __future__ import annotations

import torch


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` with GPT-2-style defaults that uses the fused kernel on CUDA.

    ``fused=None`` picks the fused implementation when every parameter is on a CUDA device.
    """

    def __init__(
        self,
        params,
        lr: float = 6e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        fused: bool | None = None,
    ):
        params = list(params)
        if fused is None:
            tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
            fused = bool(tensors) and all(p.is_cuda for p in tensors)
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused
        )
