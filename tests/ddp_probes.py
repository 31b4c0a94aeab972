"""Callbacks for the multi-process tests, importable by class_path (tests/ on PYTHONPATH):
they write what each rank saw to JSON files the test reads after the processes end."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook


class RecordLosses(L.Callback):
    """``{out}-rank{r}.json``: this rank's training loss at each optimizer step, by step."""

    def __init__(self, out: str):
        self.out, self.losses = out, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step - 1] = outputs["loss"].item()  # the step just taken

    def on_train_end(self, trainer, pl_module) -> None:
        Path(f"{self.out}-rank{trainer.global_rank}.json").write_text(json.dumps(self.losses))


class CountGradientAllReduces(L.Callback):
    """``{out}-rank{r}.json``: how many gradient buckets DDP all-reduced during each batch."""

    def __init__(self, out: str):
        self.out, self.counts, self._batch = out, [], 0

    def on_train_start(self, trainer, pl_module) -> None:
        def counting_allreduce(state, bucket):
            self.counts[self._batch] += 1
            return allreduce_hook(state, bucket)

        trainer.strategy.model.register_comm_hook(None, counting_allreduce)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch = batch_idx
        self.counts.append(0)

    def on_train_end(self, trainer, pl_module) -> None:
        assert dist.is_initialized()
        Path(f"{self.out}-rank{trainer.global_rank}.json").write_text(json.dumps(self.counts))
