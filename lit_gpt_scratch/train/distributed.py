"""The few collectives training decisions need, and parameter names seen through wrappers.

Lightning's ``strategy.reduce`` calls ``barrier()`` before every reduction, and on NCCL a
barrier makes the host wait for the device. ``all_reduce`` here calls torch.distributed alone:
on NCCL the reduction is queued on the device's stream like any kernel, and the host goes on.
In a single process every function is a no-op.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}

# What FSDP, activation-checkpoint wrappers and torch.compile insert into parameter names.
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced in place over every rank (``op``: sum or max), with no barrier.
    A collective: every rank must call it, in the same order."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=_OPS[op])
    return tensor


def unwrapped_name(name: str) -> str:
    """A parameter's name as the unwrapped model has it: ``blocks.0._fsdp_wrapped_module.
    attn.c_attn.weight`` is ``blocks.0.attn.c_attn.weight``."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name
