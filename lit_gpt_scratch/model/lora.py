"""LoRA: low-rank adapters on the blocks' linear layers (Hu et al., 2021).

A wrapped layer computes ``x W^T + b + scale * dropout(x) A^T B^T`` with ``A`` (r, in) and
``B`` (out, r), ``scale = alpha / r``. ``B`` starts at zero, so a freshly wrapped model
computes exactly what the base model did. The base weights are frozen; only ``A`` and ``B``
train, and ``merge_adapters`` folds them back into plain ``nn.Linear`` weights
(``W + scale * B @ A``) for sampling and export.

Plain torch: ``model/`` knows nothing of Lightning or checkpoints.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_gpt_scratch.errors import UserError, check_above, check_at_least, check_in

ADAPTER_NAMES = ("lora_A", "lora_B")  # the parameter names a LoRALinear adds


@dataclass
class LoRA:
    """Low-rank adapters on the blocks' linear layers; the rest of the model is frozen.

    Args:
        r: Rank of each adapter (the inner width of ``B @ A``).
        alpha: The adapter's output is scaled by ``alpha / r``.
        dropout: Dropout on the adapter's input (the base path sees the input unchanged).
        targets: Linear layers inside the blocks to adapt, by name: ``c_attn`` (query, key
            and value), ``c_proj`` (both output projections: attention's and the MLP's),
            ``c_fc``, ``gate``, ``up``, or a qualified name such as ``attn.c_proj``.
        save: What checkpoints hold: ``adapters`` (the adapters and their optimizer state;
            the base weights are read again from the base checkpoint the run started from,
            whose path and fingerprint the checkpoint records) or ``full`` (every weight).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["c_attn", "c_proj"])
    save: Literal["adapters", "full"] = "adapters"

    def check(self) -> None:
        """UserError naming the first bad option. Not in ``__post_init__``: jsonargparse would
        fold the message into a many-line ``Union`` error of its own."""
        check_at_least("model.lora.r", self.r, 1)
        check_above("model.lora.alpha", self.alpha, 0)
        check_in("model.lora.dropout", self.dropout, 0.0, 1.0)
        if not self.targets:
            raise UserError("model.lora.targets is empty: name at least one layer, e.g. c_attn")
        if self.save not in ("adapters", "full"):
            raise UserError(f"model.lora.save must be adapters or full, got {self.save!r}")

    @property
    def scale(self) -> float:
        return self.alpha / self.r


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` with a low-rank adapter beside it. Its ``weight`` and ``bias`` are the
    base layer's own parameters (same names, so a base model's state dict loads into it)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__(base.in_features, base.out_features, bias=False, device="meta")
        self.weight, self.bias = base.weight, base.bias  # shared, not copied
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **like))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **like))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init
        self.scale = alpha / r
        self.dropout = nn.Dropout(dropout)
        self.enabled = True  # False: the base layer alone (adapters_disabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return F.linear(x, self.weight, self.bias)
        adapter = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # (..., out)
        return F.linear(x, self.weight, self.bias) + self.scale * adapter

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing what this layer computes (in eval mode)."""
        with torch.device("meta"):
            plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        delta = self.scale * (self.lora_B.float() @ self.lora_A.float())  # (out, in)
        weight = self.weight.detach().float() + delta
        plain.weight = nn.Parameter(weight.to(self.weight.dtype), self.weight.requires_grad)
        plain.bias = self.bias
        return plain


def linear_layers(block: nn.Module) -> dict[str, nn.Linear]:
    """A block's linear layers by their name inside it (``attn.c_attn``, ``mlp.c_fc`` ...)."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear) and name}


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def add_adapters(gpt: nn.Module, lora: LoRA) -> None:
    """Wrap ``lora.targets`` in every block of ``gpt`` with adapters, in place, and freeze every
    other parameter. A target that names no linear layer is a UserError listing the names."""
    lora.check()
    layers = linear_layers(gpt.blocks[0])
    for target in lora.targets:
        if not any(_matches(name, target) for name in layers):
            leaves = sorted({name.rsplit(".", 1)[-1] for name in layers} | set(layers))
            raise UserError(
                f"model.lora.targets: {target!r} names no linear layer of the blocks: one of "
                f"{', '.join(leaves)}"
            )
    for p in gpt.parameters():
        p.requires_grad_(False)
    for block in gpt.blocks:
        for name, layer in linear_layers(block).items():
            if any(_matches(name, t) for t in lora.targets) and not isinstance(layer, LoRALinear):
                parent, _, leaf = name.rpartition(".")
                wrapped = LoRALinear(layer, lora.r, lora.alpha, lora.dropout)
                setattr(block.get_submodule(parent) if parent else block, leaf, wrapped)


def merge_adapters(gpt: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weight, in place: ``gpt`` becomes a plain model
    (no ``lora_A`` / ``lora_B``) that computes what the adapted one did. Returns ``gpt``."""
    for name, module in list(gpt.named_modules()):
        if isinstance(module, LoRALinear):
            parent, _, leaf = name.rpartition(".")
            setattr(gpt.get_submodule(parent), leaf, module.merged())
    return gpt


@contextlib.contextmanager
def adapters_disabled(gpt: nn.Module) -> Iterator[None]:
    """Inside, every adapter of ``gpt`` is switched off: the model computes exactly what its
    frozen base weights do (DPO's reference under LoRA)."""
    layers = [m for m in gpt.modules() if isinstance(m, LoRALinear)]
    for layer in layers:
        layer.enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.enabled = True


def is_adapter(name: str) -> bool:
    """Whether a parameter or state-dict name is an adapter's (``...c_attn.lora_A``)."""
    return name.rsplit(".", 1)[-1] in ADAPTER_NAMES


def has_adapters(module: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in module.modules())
