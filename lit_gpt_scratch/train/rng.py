"""Random number generator states, saved in every checkpoint so that a resumed run draws the
numbers an uninterrupted one would have drawn (dropout masks, anything sampled in training).

States are kept as plain lists and tensors: checkpoints load with ``weights_only=True``, which
refuses pickled numpy objects. Under several processes each rank saves its own states.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist


def rng_states() -> dict:
    """This process's python, numpy, torch and (when initialised) CUDA generator states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states = {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore what ``rng_states`` returned."""
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def all_ranks_rng_states() -> list[dict]:
    """Every rank's ``rng_states()``, by rank (a collective: call it on every rank)."""
    mine = rng_states()
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return gathered


def restore_rank_rng_states(saved: list[dict]) -> bool:
    """Restore this rank's states from a list ``all_ranks_rng_states`` saved. False (and
    nothing changed) when the checkpoint came from another number of processes."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if len(saved) != world:
        return False
    set_rng_states(saved[rank])
    return True
