"""A callback for tests: SIGKILL the training process at a chosen optimizer step, as a
preemption or an out-of-memory kill would. Importable by class_path with tests/ on PYTHONPATH."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """Kill at ``step``: ``when="end"`` in that batch's end hooks, before ModelCheckpoint
    (Lightning runs it last) could save it; ``"start"`` at the next batch's start, after."""

    def __init__(self, step: int, when: str = "end"):
        self.step, self.when = step, when

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.when == "end" and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_start(self, trainer, *args) -> None:
        if self.when == "start" and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
