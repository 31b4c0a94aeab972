"""What the exporters share: the one-line refusal of a plug-in a target format cannot express,
and the zero bias written where a format needs one the model has not."""

from __future__ import annotations

import torch

from lit_gpt_scratch.errors import UserError


def refuse_unless(
    ok: bool, slot: str, module, feature: str | None = None, *, what: str, target: str
) -> None:
    """A UserError "cannot <what>: <slot> <Class> [with <feature>] has no <target>" unless
    ``ok``; a ``feature`` naming a layout is left out (the class says it)."""
    if not ok:
        detail = f" with {feature}" if feature and "layout" not in feature else ""
        raise UserError(f"cannot {what}: {slot} {type(module).__name__}{detail} has no {target}")


def or_zeros(bias, size: int) -> torch.Tensor:
    return bias.detach() if bias is not None else torch.zeros(size)
