"""Stop cleanly on a signal: save ``last.ckpt`` at the current step, then exit with 128 + the
signal's number, so ``--ckpt_path last`` continues exactly there.

SIGTERM (``kill``, Kubernetes, SLURM at the time limit), SIGUSR1 (SLURM's ``--signal``
warning before preemption) and SIGINT (Ctrl-C) are caught while ``fit`` runs. The handler only
records the signal; the save happens at the end of the optimizer step in progress, once every
rank has heard of it. A second Ctrl-C stops at once, without saving. Signals that come once
training has ended, until the process exits, are said and ignored: the run is saved, and a
default action would only replace its exit code.
"""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_gpt_scratch.errors import StoppedNow, UserError
from lit_gpt_scratch.train.checkpoints import RunCheckpoint, last_path_of, validation_due
from lit_gpt_scratch.train.distributed import all_reduce

log = logging.getLogger(__name__)


class StopOnSignal(L.Callback):
    """Save a checkpoint and stop training when one of ``signals`` arrives.

    Args:
        signals: Signal names to catch (empty: none).
        sync_every_n_steps: With several processes, every how many optimizer steps the ranks
            agree on whether a signal arrived: one small all-reduce, whose result the host
            must read. None: at the logging steps (``trainer.log_every_n_steps``), where the
            host reads the logged metrics anyway. A single process checks every step for free.
    """

    def __init__(
        self,
        signals: list[str] | None = None,
        sync_every_n_steps: int | None = None,
    ):
        names = ["SIGTERM", "SIGUSR1", "SIGINT"] if signals is None else signals
        self.signals = [_signal_named(n) for n in names]
        if sync_every_n_steps is not None and sync_every_n_steps < 1:
            raise UserError(
                f"preemption.sync_every_n_steps must be at least 1, got {sync_every_n_steps}"
            )
        self.sync_every_n_steps = sync_every_n_steps
        self._seen_step = 0  # the optimizer step count at the last batch end
        self.received: int | None = None  # the signal that arrived first
        self.stopped_by: int | None = None  # the signal training stopped for, once saved
        self._training = False
        self._previous: dict[int, object] = {}

    # --- handlers ---------------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        self._training = True
        self._seen_step = trainer.global_step  # a resumed run starts past 0
        if signal.SIGTERM in self.signals and trainer.world_size > 1:
            _skip_lightnings_sigterm_broadcast(trainer)
        # Installed here, after the Trainer has registered its own SIGTERM handler (which
        # would raise and end fit without a save at this step): ours replace it for the run.
        _installed.append(self)
        for signum in self.signals:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook): leave signals alone
                log.warning("signals are not caught: fit does not run in the main thread")
                return

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore_handlers()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if not _kept_by_command:  # Lightning's last hook; it still flushes the loggers after
            self._restore_handlers()

    def _restore_handlers(self) -> None:
        if self in _installed:
            _installed.remove(self)
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if not self._training:  # training has ended: nothing is left to save or to stop
            _say_ignored(signum, "training has ended")
        elif self.received is not None and signum == signal.SIGINT:
            raise StoppedNow  # a second Ctrl-C: stop now
        elif self.received is None:
            self.received = signum
            log.warning(
                "%s received: saving a checkpoint at the end of this step, then stopping",
                signal.Signals(signum).name,
            )
        else:
            _say_ignored(signum, f"already stopping for {signal.Signals(self.received).name}")

    # --- save and stop ----------------------------------------------------------------------

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.stopped_by is not None:
            return
        signum = self._agreed_signal(trainer)
        if signum is None:
            return
        validated = validation_due(trainer)
        callback = trainer.checkpoint_callback
        if isinstance(callback, RunCheckpoint) and validated:
            callback.last_after_validation = True  # the step's validation point comes first
        elif isinstance(callback, RunCheckpoint):
            callback.save_last_now(trainer)
        else:  # a plain ModelCheckpoint, or none: save beside the run
            trainer.save_checkpoint(last_checkpoint_path(trainer))
        if not validated:
            # Lightning validates at a requested stop: a point an uninterrupted run never has
            trainer.limit_val_batches = 0
        self.stopped_by = signum
        trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        self._training = False
        if self.stopped_by is not None and trainer.is_global_zero:
            log.warning(
                "saved %s at step %d; stopping (exit code %d). Resume with --ckpt_path last",
                last_checkpoint_path(trainer),
                trainer.global_step,
                128 + self.stopped_by,
            )

    def _agreed_signal(self, trainer) -> int | None:
        # Only after an optimizer step's last micro-batch (the step count has moved): a save
        # between micro-batches would lose the gradient accumulated so far on resume.
        step, stepped = trainer.global_step, trainer.global_step != self._seen_step
        self._seen_step = step
        if not stepped:
            return None
        if trainer.world_size == 1:
            return self.received
        every = self.sync_every_n_steps or max(trainer.log_every_n_steps, 1)
        if step % every:
            return None
        # The largest signal number any rank received (0: none), the same on every rank.
        mine = torch.tensor(self.received or 0, device=trainer.strategy.root_device)
        return int(all_reduce(mine, "max")) or None


_installed: list[StopOnSignal] = []  # those whose handlers are in place
_kept_by_command = False


@contextmanager
def handlers_kept_until_done():
    """While a command runs fit: the handlers stay past Lightning's teardown (its loggers'
    final flush comes after) until the command returns, not only until training ends."""
    global _kept_by_command
    _kept_by_command = True
    try:
        yield
    finally:
        _kept_by_command = False
        while _installed:
            _installed[-1]._restore_handlers()


def _say_ignored(signum: int, why: str) -> None:
    log.warning("%s received: ignored, %s", signal.Signals(signum).name, why)


def _skip_lightnings_sigterm_broadcast(trainer) -> None:
    """Under several processes Lightning broadcasts, before every batch, whether rank 0 has
    received SIGTERM, and reads the answer on the host: one device sync per micro-batch. Its
    flag is set only by its own SIGTERM handler, which ours replace while training, so the
    answer is always no: skip it. Lightning has no public switch for this; the method is
    private (``TrainingEpochLoop._broadcast_sigterm_tensor``, Lightning 2.6), and
    tests/test_lightning_internals.py fails if an upgrade renames it."""
    epoch_loop = trainer.fit_loop.epoch_loop
    if hasattr(epoch_loop, "_broadcast_sigterm_tensor"):
        epoch_loop._broadcast_sigterm_tensor = lambda: None


def last_checkpoint_path(trainer) -> str:
    """The ``last.ckpt`` of the run's ModelCheckpoint, or one beside the run without one."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath:
        return str(last_path_of(callback))
    return str(Path(trainer.default_root_dir) / "last.ckpt")


def _signal_named(name: str) -> int:
    try:
        return int(signal.Signals[name.upper()])
    except KeyError:
        raise UserError(f"preemption.signals: unknown signal {name!r}") from None
