"""A checkpoint ready to score: its GPT on a device, in a precision, and its tokenizer."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from lit_gpt_scratch.devices import usable_device
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.evaluate.scoring import Forward, gpt_forward
from lit_gpt_scratch.train.checkpoint_files import checkpoint_tokenizer, load_gpt

# Lightning's precision names -> (the weights' dtype, the autocast dtype or None)
PRECISIONS = {
    "64-true": (torch.float64, None),
    "32-true": (torch.float32, None),
    "bf16-true": (torch.bfloat16, None),
    "16-true": (torch.float16, None),
    "bf16-mixed": (torch.float32, torch.bfloat16),
    "16-mixed": (torch.float32, torch.float16),
}
# The precision a checkpoint is scored in by default: that of its stored weights.
STORED = {torch.float64: "64-true", torch.float32: "32-true", torch.bfloat16: "bf16-true",
          torch.float16: "16-true"}  # fmt: skip


def check_precision(precision: str | None) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")


@dataclass
class ScoredModel:
    gpt: torch.nn.Module
    tokenizer: object
    device: torch.device
    precision: str

    @property
    def forward(self) -> Forward:
        return gpt_forward(self.gpt)

    def autocast(self):
        """The precision's autocast (a mixed one), or nothing."""
        dtype = PRECISIONS[self.precision][1]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)


def load_scored_model(
    ckpt_path: str,
    device: str | torch.device = "auto",
    precision: str | None = None,
    tokenizer: str | None = None,
) -> ScoredModel:
    """The checkpoint's GPT in eval mode on ``device``, in ``precision`` (by default that of
    its stored weights), with ``tokenizer`` (by default the checkpoint's)."""
    check_precision(precision)
    if not isinstance(device, torch.device):
        device = torch.device(usable_device(device))
    loaded = load_gpt(ckpt_path, device)
    tok = checkpoint_tokenizer(loaded, tokenizer)
    precision = precision or STORED.get(loaded.dtype, "32-true")
    gpt = loaded.gpt.to(PRECISIONS[precision][0])
    return ScoredModel(gpt, tok, device, precision)
