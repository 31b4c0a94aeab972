"""A run's checkpoints. RunCheckpoint is Lightning's ModelCheckpoint that also keeps the
``last.ckpt`` files before the newest (``last-1.ckpt``, ...: ``rotate_last``), so a checkpoint
damaged after it was written still leaves a good one to resume from. Configured as the
top-level ``checkpoint:`` section.

At a step that is validated, the save waits for the validation: the file is named and ranked
by that step's own ``val/loss`` (Lightning's saves at the batch end carry the one before),
and a kill between the save and the validation can no longer lose the validation point (a
resume from that save skipped it). A scheduled save at a step that is not validated keeps
``last.ckpt`` only: no top-k file is ranked or named by another step's validation.

Every write goes to a temporary file beside the target, renamed over it
(``checkpoint_io.AtomicCheckpointIO``), so a kill during a save leaves the previous
``last.ckpt`` whole.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

from lit_gpt_scratch.errors import UserError


def last_path_of(callback: ModelCheckpoint) -> Path:
    """Where a ModelCheckpoint keeps ``last.ckpt`` (``--ckpt_path last`` looks there)."""
    return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint keeping ``keep_last`` last checkpoints: ``last.ckpt`` and the
    ``keep_last - 1`` before it, as ``last-1.ckpt``, ``last-2.ckpt``...

    Args:
        keep_last: How many of the newest "last" checkpoints to keep (at least 1).
        **kwargs: ModelCheckpoint's own arguments (``every_n_train_steps``, ``monitor``...).
    """

    def __init__(self, keep_last: int = 2, **kwargs):
        if keep_last < 1:
            raise UserError(f"checkpoint.keep_last must be at least 1, got {keep_last}")
        super().__init__(**kwargs)
        self.keep_last = keep_last
        self._validation_next = False  # within on_train_batch_end: this step is validated
        self.last_after_validation = False  # a stop's last.ckpt, due after this validation
        self._step_of_last: int | None = None  # the step the newest last.ckpt holds
        self._validated_step: int | None = None  # the step of this run's latest validation

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._validation_next = validation_due(trainer)
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            self._validation_next = False

    def _deferred_to_validation(self) -> bool:
        """Within a validated step's batch end: the save waits for on_validation_end, where
        Lightning makes the deferred saves with the step's own metrics."""
        if self._validation_next:
            self._defer_save_until_validation = True
        return self._validation_next

    def _save_topk_checkpoint(self, trainer, monitor_candidates) -> None:
        if self._deferred_to_validation():
            return
        if self._reads_validation() and self._validated_step != trainer.global_step:
            return  # the metrics at hand are an earlier step's: these weights were not validated
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _reads_validation(self) -> bool:
        """Whether the top-k files are ranked (``monitor``) or named (``filename``) by a
        validation metric, which only a validation of the same step may give them."""
        return (self.monitor or "").startswith("val/") or "{val/" in (self.filename or "")

    def on_validation_end(self, trainer, pl_module) -> None:
        self._check_monitor(trainer)
        if not trainer.sanity_checking:  # before the deferred saves, which Lightning makes now
            self._validated_step = trainer.global_step
        super().on_validation_end(trainer, pl_module)
        if self.last_after_validation and not trainer.sanity_checking:
            self.last_after_validation = False
            if self._step_of_last != trainer.global_step:
                self.save_last_now(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._step_of_last = trainer.global_step  # what a resumed run's checkpoint holds

    def on_train_end(self, trainer, pl_module) -> None:
        """The last step's weights as ``last.ckpt`` when training ends between two scheduled
        saves (``max_steps`` 10 with saves every 4: the run ended with step 8's)."""
        super().on_train_end(trainer, pl_module)
        if self.save_last and self._step_of_last != trainer.global_step:
            self.save_last_now(trainer)

    def on_fit_start(self, trainer, pl_module) -> None:
        """A ``checkpoint.monitor`` of validation that the module does not log (a typo such as
        ``val/los``), refused before training rather than at the first save it blocks."""
        names = getattr(pl_module, "EVALUATION_METRICS", None)
        if names is None or self.monitor is None or not self.monitor.startswith("val/"):
            return
        if self.monitor.removeprefix("val/") not in names:
            raise UserError(
                f"checkpoint.monitor {self.monitor!r} is not a metric validation logs "
                f"({', '.join(f'val/{n}' for n in names)}): use one of them"
            )

    def _check_monitor(self, trainer) -> None:
        """Any other monitor no logged metric answers to: refused at the first validation
        after a training step."""
        logged = trainer.callback_metrics
        if self.monitor is None or self.monitor in logged or not logged:
            return
        if trainer.sanity_checking or trainer.global_step == 0:
            return  # training metrics are not logged yet (the sanity check, val_at_start)
        raise UserError(
            f"checkpoint.monitor {self.monitor!r} is not a metric this run logs "
            f"({', '.join(sorted(logged))}): use one of them"
        )

    @property
    def last_path(self) -> Path:
        return last_path_of(self)

    def save_last_now(self, trainer) -> Path:
        """Save ``last.ckpt`` at the current step, outside the usual schedule (on a signal)."""
        self.last_model_path = str(self.last_path)
        self._save_checkpoint(trainer, str(self.last_path))
        return self.last_path

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        # Lightning saves to last-v1.ckpt, last-v2.ckpt... when last.ckpt exists and is not
        # the last_model_path it restored: it restores none when the checkpoint's dirpath is
        # not this one's (the run folder moved), and a top-k file saved before the first
        # last.ckpt holds none. The rotation keeps its names exact: the newest is always
        # last.ckpt, and --ckpt_path last finds it.
        if self._deferred_to_validation():
            return
        if self.save_last:
            self.last_model_path = str(self.last_path)
        super()._save_last_checkpoint(trainer, monitor_candidates)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        is_last = Path(filepath) == self.last_path
        if self.save_last and is_last and trainer.is_global_zero:
            rotate_last(self.last_path, self.keep_last - 1)
        super()._save_checkpoint(trainer, filepath)
        if is_last:
            self._step_of_last = trainer.global_step


def validation_due(trainer) -> bool:
    """Whether Lightning validates right after this training batch, asked in its batch-end
    hooks; a stop requested in those hooks (which Lightning also validates for) left out.
    Lightning's own rule, a private method (Lightning 2.6); tests/test_lightning_internals.py
    fails if an upgrade renames it."""
    loop = trainer.fit_loop
    stop, trainer.should_stop = trainer.should_stop, False
    try:
        return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))
    finally:
        trainer.should_stop = stop


# --- the last checkpoints: rotated, never half-written, the newest readable one resumed ---------

LAST = "last.ckpt"


def older_last(last: Path, n: int) -> Path:
    """``last-<n>.ckpt``: the ``last.ckpt`` of ``n`` saves before."""
    return last.with_name(f"last-{n}.ckpt")


def rotate_last(last: Path, keep_older: int) -> None:
    """Before ``last.ckpt`` is replaced, shift ``last-1`` → ``last-2`` ... and link the current
    ``last.ckpt`` as ``last-1.ckpt``, keeping ``keep_older`` of them. ``last.ckpt`` itself
    stays in place, whole, until the new one is renamed over it."""
    if keep_older < 1 or not last.exists():
        return
    oldest = older_last(last, keep_older)
    if oldest.is_dir():  # sharded (FSDP) checkpoints are directories
        shutil.rmtree(oldest)
    oldest.unlink(missing_ok=True)
    for n in range(keep_older - 1, 0, -1):
        if older_last(last, n).exists():
            os.replace(older_last(last, n), older_last(last, n + 1))
    tmp = last.with_name(f"{older_last(last, 1).name}.tmp")
    if last.is_dir():  # a sharded checkpoint is a directory: move it aside
        os.replace(last, older_last(last, 1))
        return
    tmp.unlink(missing_ok=True)
    try:
        os.link(last, tmp)  # a second name for the same bytes: no copy
    except OSError:
        shutil.copy2(last, tmp)
    os.replace(tmp, older_last(last, 1))


def last_candidates_in(folder: Path) -> list[Path]:
    """``last.ckpt``, ``last-1.ckpt``, ... in a checkpoint folder, newest first, as exist."""
    last = folder / LAST
    found = [last] if last.exists() else []
    n = 1
    while older_last(last, n).exists():
        found.append(older_last(last, n))
        n += 1
    return found
