"""The divergence guard: what a step with a non-finite gradient norm does.

A NaN or an infinity in the gradient norm (a NaN or inf loss gives one too) means the update
would poison the weights. The step is skipped: the weights and the optimizer state stay as they
were, and the batch counts as used. One bad batch is survivable; many in a row mean the run has
diverged, and the guard stops it (``Diverged``, exit code 3) with no checkpoint saved past the
bad step.

The flags live on the device: the module records one per step, and the guard reads them all at
once (one host sync) when asked, at the logging steps and before every save.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn

from lit_gpt_scratch.errors import Diverged, UserError, check_at_least

Policy = Literal["skip", "stop"]


class DivergenceGuard:
    """Counts skipped steps and stops a run that diverged.

    Args:
        policy: ``skip``: a non-finite step is skipped and training goes on; ``stop``: the
            first one ends the run.
        max_consecutive_skips: Under ``skip``, stop after this many non-finite steps in a row.
    """

    def __init__(self, policy: Policy = "skip", max_consecutive_skips: int = 20):
        if policy not in ("skip", "stop"):
            raise UserError(f"model.nonfinite must be skip or stop, got {policy!r}")
        check_at_least("model.max_consecutive_skips", max_consecutive_skips, 0)
        self.policy, self.max_consecutive_skips = policy, max_consecutive_skips
        self.skipped_steps = 0  # over the whole run
        self.consecutive_skips = 0
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, () 1.0 if non-finite)
        self.skips_to_log = False  # set when the count changed, until the module logs it

    def record(self, step: int, bad: torch.Tensor) -> None:
        """Keep step ``step``'s flag (a () float tensor, 1.0: non-finite), unread."""
        self._pending.append((step, bad))

    def check(self) -> bool:
        """Read the pending flags: count skips, warn, and raise ``Diverged`` under ``stop``
        or after too many in a row. True if the newest step was skipped."""
        if not self._pending:
            return False
        steps = [step for step, _ in self._pending]
        flags = torch.stack([bad for _, bad in self._pending]).tolist()  # one sync
        self._pending.clear()
        skipped = [step for step, bad in zip(steps, flags, strict=True) if bad]
        for step, bad in zip(steps, flags, strict=True):
            self.consecutive_skips = self.consecutive_skips + 1 if bad else 0
            if bad and (
                self.policy == "stop" or self.consecutive_skips > self.max_consecutive_skips
            ):
                why = (
                    "model.nonfinite is stop"
                    if self.policy == "stop"
                    else f"{self.consecutive_skips} steps in a row"
                )
                raise Diverged(
                    f"non-finite gradient norm at step {step} ({why}): the update was skipped, "
                    "the run stopped, and its checkpoints hold weights from before that step"
                )
        if skipped:
            self.skipped_steps += len(skipped)
            self.skips_to_log = True
            listed = ", ".join(map(str, skipped))
            rank_zero_warn(f"non-finite gradient norm at step {listed}: update skipped")
        return bool(flags[-1])

    def state_dict(self) -> list[int]:
        return [self.skipped_steps, self.consecutive_skips]

    def load_state_dict(self, state: list[int]) -> None:
        self.skipped_steps, self.consecutive_skips = state
