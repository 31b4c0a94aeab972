"""A callback for tests: send the training process a signal at a chosen optimizer step, as a
preemption (SIGTERM, SIGUSR1), Ctrl-C (SIGINT) or an out-of-memory kill (SIGKILL) would.
Importable by class_path with tests/ on PYTHONPATH."""

from __future__ import annotations

import atexit
import io
import os
import signal
import time

import lightning as L
import torch


class SignalAtStep(L.Callback):
    """Send ``signal`` at ``step``: ``when="end"`` in that batch's end hooks, before
    ModelCheckpoint (Lightning runs it last) could save it; ``"start"`` at the next batch's
    start, after; ``"validation"`` as that step's validation starts. ``batch``: at that
    batch index instead (under gradient accumulation, a micro-batch inside an optimizer
    step). ``times``: send it that many times in a row (a double Ctrl-C). ``later``: another
    signal, sent ``later_at`` ``"train_end"`` (as training ends) or ``"exit"`` (as the
    interpreter exits), 0.3 s before the process would end."""

    def __init__(
        self, step: int = -1, signal: str = "SIGKILL", when: str = "end", batch: int = -1,
        times: int = 1, later: str = "", later_at: str = "exit",
    ):  # fmt: skip
        self.step, self.when, self.batch, self.times = step, when, batch, times
        self.signum = int(getattr(signal_module, signal))
        self.sent = False
        self.later = int(getattr(signal_module, later)) if later else None
        self.later_at = later_at
        if self.later and later_at == "exit":
            atexit.register(self._send_later)

    def _send_later(self) -> None:
        os.kill(os.getpid(), self.later)
        time.sleep(0.3)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.later and self.later_at == "train_end":
            self._send_later()

    def _maybe_send(self, trainer, when: str, batch_idx: int) -> None:
        at = batch_idx == self.batch if self.batch >= 0 else trainer.global_step == self.step
        if self.when == when and at and not self.sent:
            self.sent = True
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe_send(trainer, "end", batch_idx)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._maybe_send(trainer, "start", batch_idx)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._maybe_send(trainer, "validation", -1)


signal_module = signal


class NanGradAtStep(L.Callback):
    """Make one gradient NaN after the backward pass of optimizer step ``step`` (or of every
    step from it on, with ``every=True``), as an overflow or a bad batch would."""

    def __init__(self, step: int, every: bool = False):
        self.step, self.every = step, every

    def on_after_backward(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if step == self.step or (self.every and step > self.step):
            next(p for p in pl_module.parameters() if p.grad is not None).grad.fill_(float("nan"))


class NanWeightAtStep(L.Callback):
    """Write a NaN into a weight at the end of optimizer step ``step`` (an update gone wrong
    that the gradient check could not see)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(iter(pl_module.parameters())).view(-1)[0] = float("nan")


class KillDuringSaveAtStep(L.Callback):
    """SIGKILL the process halfway through writing the checkpoint file of step ``step``: half
    of its bytes are in the file being written when the process dies."""

    def __init__(self, step: int):
        self.step = step

    def setup(self, trainer, pl_module, stage: str) -> None:
        save, callback = torch.save, self

        def save_half_then_die(obj, f, *args, **kwargs):
            if trainer.global_step == callback.step and hasattr(f, "write"):
                whole = io.BytesIO()
                save(obj, whole, *args, **kwargs)
                f.write(whole.getvalue()[: len(whole.getvalue()) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return save(obj, f, *args, **kwargs)

        torch.save = save_half_then_die


class PauseAtStep(L.Callback):
    """At the start of optimizer step ``step``, create ``<folder>/reached`` and wait until
    ``<folder>/go`` exists: a test acts while this run is surely mid-way."""

    def __init__(self, step: int, folder: str):
        self.step, self.folder = step, folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            open(os.path.join(self.folder, "reached"), "w").close()
            while not os.path.exists(os.path.join(self.folder, "go")):
                time.sleep(0.05)
