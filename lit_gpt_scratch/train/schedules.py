"""Learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lit_gpt_scratch.errors import UserError, check_at_least


class WarmupCosineLR(LRScheduler):
    """Linear warmup from 0 to the optimizer's lr, then cosine decay to ``min_lr``.

    Args:
        optimizer: The wrapped optimizer; its ``lr`` (per group) is the peak.
        warmup_steps: Steps of linear warmup.
        max_steps: Step at which the decay reaches ``min_lr`` (it stays there after). None:
            the Trainer's total optimizer steps, filled in by LitGPT through ``set_total_steps``.
        min_lr: Final learning rate, for every group.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 100,
        max_steps: int | None = None,
        min_lr: float = 0.0,
    ):
        check_at_least("model.lr_scheduler.init_args.warmup_steps", warmup_steps, 0)
        check_at_least("model.lr_scheduler.init_args.min_lr", min_lr, 0)
        if max_steps is not None:
            check_at_least("model.lr_scheduler.init_args.max_steps", max_steps, 1)
        peak = min(group.get("initial_lr", group["lr"]) for group in optimizer.param_groups)
        if min_lr > peak:
            raise UserError(
                f"model.lr_scheduler.init_args.min_lr {min_lr} is above the optimizer's lr "
                f"{peak}: the schedule would raise the rate as it decays"
            )
        self.warmup_steps, self.max_steps, self.min_lr = warmup_steps, max_steps, min_lr
        super().__init__(optimizer)

    def set_total_steps(self, total: float) -> None:
        """Called by LitGPT with the run's optimizer steps when ``max_steps`` was left None."""
        if self.max_steps is None and math.isinf(total):
            raise UserError(
                "model.lr_scheduler needs a length: the run sets no trainer.max_steps, so "
                "set trainer.max_steps or model.lr_scheduler.init_args.max_steps"
            )
        if self.max_steps is None:
            self.max_steps = int(total)
            self._reset_lr()

    def _reset_lr(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr

    def get_lr(self) -> list[float]:
        step = self.last_epoch  # LRScheduler counts steps in last_epoch
        return [self.lr_at(step, base) for base in self.base_lrs]

    def lr_at(self, step: int, peak: float) -> float:
        if step < self.warmup_steps:
            return peak * (step + 1) / (self.warmup_steps + 1)
        if self.max_steps is None:
            return peak
        return self.decayed(step, peak)

    def decayed(self, step: int, peak: float) -> float:
        """The learning rate after the warmup, ``max_steps`` known."""
        if step >= self.max_steps:
            return self.min_lr
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        return self.min_lr + 0.5 * (peak - self.min_lr) * (1 + math.cos(math.pi * progress))


class WarmupStableDecayLR(WarmupCosineLR):
    """Warmup-stable-decay (MiniCPM, modded-nanogpt): linear warmup, the peak held, then a
    linear decay to ``min_lr`` over the last ``decay_fraction`` of the run.

    Args:
        optimizer: The wrapped optimizer; its ``lr`` (per group) is the peak.
        warmup_steps: Steps of linear warmup.
        max_steps, min_lr: As in ``WarmupCosineLR``.
        decay_fraction: Share of ``max_steps`` spent decaying, at the end.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 100,
        max_steps: int | None = None,
        decay_fraction: float = 0.2,
        min_lr: float = 0.0,
    ):
        if not 0 < decay_fraction <= 1:
            raise UserError(f"lr_scheduler decay_fraction must be in (0, 1], got {decay_fraction}")
        self.decay_fraction = decay_fraction
        super().__init__(optimizer, warmup_steps, max_steps, min_lr)

    def decayed(self, step: int, peak: float) -> float:
        decay_start = self.max_steps - self.decay_fraction * self.max_steps
        if step < decay_start:
            return peak
        progress = min(1.0, (step - decay_start) / max(1.0, self.max_steps - decay_start))
        return peak + (self.min_lr - peak) * progress


# --- resume: the config's settings over the checkpoint's -------------------------------------

# A scheduler's state that counts progress, not settings: a resume keeps the checkpoint's.
PROGRESS = ("last_epoch", "_step_count", "_last_lr", "_is_initial", "_get_lr_called_within_step")


def configured_settings(optimizer: Optimizer, scheduler: LRScheduler) -> dict:
    """The param groups' settings (``lr`` aside: the schedule sets it) and the scheduler's,
    as the config built them. Lightning loads a checkpoint's over both after
    ``configure_optimizers``; LitGPT keeps these to put back (``apply_configured``)."""
    return {
        "optimizer": [
            {k: v for k, v in group.items() if k not in ("params", "lr")}
            for group in optimizer.param_groups
        ],
        "lr_scheduler": {k: v for k, v in scheduler.state_dict().items() if k not in PROGRESS},
    }


def apply_configured(
    optimizer: Optimizer, scheduler: LRScheduler, configured: dict, step: int
) -> list[str]:
    """Continue at ``step`` with the configured settings, not the checkpoint's: each group's
    ``lr`` becomes the configured schedule's at ``step``, as a run started with this config
    would have it there (so a raised ``max_steps`` stretches the decay over the new length).
    Returns the settings that differed, as ``"key old -> new"``."""
    changed = _differences(configured_settings(optimizer, scheduler), configured)
    if not changed and scheduler.last_epoch == step:
        return []
    if not isinstance(scheduler, WarmupCosineLR):  # its lr at a step depends on the path there
        raise UserError(
            f"model.lr_scheduler {type(scheduler).__name__} cannot continue with changed "
            f"settings ({changed[0] if changed else f'at step {step}'}): keep the checkpoint's, "
            "or use lit_gpt_scratch.train.schedules.WarmupCosineLR or WarmupStableDecayLR"
        )
    for group, settings in zip(optimizer.param_groups, configured["optimizer"], strict=True):
        group.update(settings)
    scheduler.__dict__.update(configured["lr_scheduler"])
    scheduler.last_epoch, scheduler._step_count = step, step + 1
    scheduler._reset_lr()
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return changed


def _differences(saved: dict, configured: dict) -> list[str]:
    changed = []
    for part in ("optimizer", "lr_scheduler"):
        before, after = saved[part], configured[part]
        pairs = zip(before, after, strict=True) if part == "optimizer" else [(before, after)]
        for old, new in pairs:  # a param group's change once, however many groups share it
            for key in sorted((old.keys() | new.keys()) - {"base_lrs"}):  # base_lrs: the lr's
                name = "lr" if key == "initial_lr" else key
                change = f"model.{part} {name} {old.get(key)} -> {new.get(key)}"
                if old.get(key) != new.get(key) and change not in changed:
                    changed.append(change)
    return changed
