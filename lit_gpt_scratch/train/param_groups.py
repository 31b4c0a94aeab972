"""Which parameters the optimizer gets, in which groups: each parameter's role by name and
shape, read off the unwrapped model (under FSDP every parameter is a 1-D shard), and the check
that no parameter went non-finite before a save."""

from __future__ import annotations

import torch

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.model.lora import is_adapter
from lit_gpt_scratch.train.distributed import all_reduce, unwrapped_name


def parameter_roles(gpt: torch.nn.Module) -> dict[str, str]:
    """Each parameter's role, by name: ``matrix`` (the blocks' weight matrices), ``embedding``
    (2-D outside the blocks: a lookup table or the output layer) or ``vector`` (biases, norm
    gains); with LoRA, ``adapter`` (``lora_A``, ``lora_B``) and ``frozen`` (every other one).
    Read off the unwrapped model: under FSDP every parameter is a 1-D shard."""
    roles = {}
    for name, p in gpt.named_parameters():  # each parameter once: a tied head is wte
        if is_adapter(name):
            roles[name] = "adapter"
        elif not p.requires_grad:
            roles[name] = "frozen"
        elif p.dim() < 2:
            roles[name] = "vector"
        else:
            roles[name] = "matrix" if name.startswith("blocks.") else "embedding"
    return roles


def param_groups(gpt: torch.nn.Module, roles: dict[str, str] | None = None) -> list[dict]:
    """Three groups, each tagged with its ``role`` for optimizers that treat them apart
    (``optimizers.Muon``): the blocks' weight matrices, the embeddings and the head, both
    decayed, and the vectors (no decay). ``roles``: ``parameter_roles`` of the model before it was
    wrapped (FSDP); by default, of ``gpt`` as it is. A model with LoRA adapters gets one group
    instead, the adapters (decayed: decay pulls ``B @ A`` towards the base model), and its
    frozen parameters none."""
    roles = parameter_roles(gpt) if roles is None else roles
    groups: dict[str, list] = {"matrix": [], "embedding": [], "vector": [], "adapter": []}
    for name, p in gpt.named_parameters():
        role = roles.get(unwrapped_name(name))
        if role is None:
            raise UserError(
                f"parameter {name} is not one of the model's own: with FSDP, keep "
                "use_orig_params true (Lightning's default) so each parameter keeps its name"
            )
        if role != "frozen":
            groups[role].append(p)
    if groups["adapter"]:
        return [{"params": groups["adapter"], "role": "adapter"}]
    return [
        {"params": groups["matrix"], "role": "matrix"},
        {"params": groups["embedding"], "role": "embedding"},
        {"params": groups["vector"], "role": "vector", "weight_decay": 0.0},
    ]


def first_nonfinite_parameter(gpt: torch.nn.Module) -> str | None:
    """The name of the first parameter holding a NaN or an infinity on any rank, or None.
    A collective (every rank must call it): under FSDP each rank sees only its shard, so the
    ranks pool their findings and all take the same decision."""
    named = list(gpt.named_parameters())
    flags = torch.stack([~p.isfinite().all() for _, p in named]).float()  # (parameters,)
    found = all_reduce(flags, "max").nonzero().flatten().tolist()  # one host read
    return unwrapped_name(named[found[0]][0]) if found else None
