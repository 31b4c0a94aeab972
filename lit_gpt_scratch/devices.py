"""The device a command runs on, from its ``--device`` option."""

import torch

from lit_gpt_scratch.errors import UserError


def usable_device(name: str) -> str:
    """``name`` (cpu, cuda, cuda:N, or auto) if this machine has it; else a UserError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device: cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA GPU (use cpu or auto)")
    return name
