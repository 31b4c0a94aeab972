"""Downstream tasks during training: ``eval/<task>/<metric>`` in TensorBoard every N steps.

Configured at the top level of a training config, like ``samples:``::

    downstream:
      tasks: [hellaswag, python_choice]
      task_dir: data/tasks
      every_n_steps: 500
      limit: 200

The task files are read when the run starts, so a missing or malformed one stops it before
the first step. Scoring is that of ``evaluate`` (``lit_gpt_scratch/evaluate``).
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_only

from lit_gpt_scratch.errors import UserError, check_at_least
from lit_gpt_scratch.evaluate.runner import EncodedTask, encode_task, run_tasks
from lit_gpt_scratch.evaluate.tasks import load_tasks

log = logging.getLogger(__name__)


class DownstreamEval(L.Callback):
    """Every ``every_n_steps`` optimizer steps, and when training ends, score the model on
    downstream tasks and log each metric as ``eval/<task>/<metric>``.

    It changes nothing a run computes: scoring draws no random numbers, runs eagerly even
    when the model is compiled (the compiled training graph is left alone), in eval mode
    under the run's precision, and saves no state, so a resumed run logs what an
    uninterrupted one does. Across ranks each scores its share of the items and the counts
    are summed.

    Args:
        tasks: Tasks as ``evaluate --tasks`` names them (NAME or NAME=FILE).
        task_dir: Folder holding ``<task>.jsonl``; ``hf`` reads the named tasks' Hugging
            Face datasets.
        every_n_steps: Steps between evaluations (0: never).
        limit: Score only the first this many items of each task.
        batch_size: Items (all their choices) per forward pass.
    """

    def __init__(
        self,
        tasks: list[str] | None = None,
        task_dir: str | None = None,
        every_n_steps: int = 0,
        limit: int | None = None,
        batch_size: int = 4,
    ):
        check_at_least("downstream.every_n_steps", every_n_steps, 0)
        check_at_least("downstream.batch_size", batch_size, 1)
        if limit is not None:
            check_at_least("downstream.limit", limit, 1)
        if every_n_steps and not tasks:
            raise UserError("downstream.every_n_steps is set but downstream.tasks is empty")
        self.every_n_steps, self.batch_size = every_n_steps, batch_size
        # Read now, when the config is instantiated: a bad file stops the run before it starts.
        self.tasks = load_tasks(tasks, task_dir, limit) if every_n_steps else []
        self._encoded: list[EncodedTask] = []
        self._last_step = -1

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or not self.tasks:
            return
        from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

        datamodule = getattr(trainer, "datamodule", None)
        spec = getattr(datamodule, "hparams", {}).get("tokenizer", "gpt2")
        tokenizer, block = load_tokenizer(spec), pl_module.gpt.block_size
        warn = trainer.is_global_zero
        self._encoded = [encode_task(task, tokenizer, block, warn=warn) for task in self.tasks]

    def on_train_start(self, trainer, pl_module) -> None:
        # A run resumed from a step that logged scores: TensorBoard dropped the events of that
        # step and after (purge_step), so log the step's scores again (the same weights).
        if resumed_at_a_multiple(trainer, self.every_n_steps) and self._encoded:
            self._last_step = trainer.global_step
            self.log_scores(trainer, pl_module, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self._encoded or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        self.log_scores(trainer, pl_module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._encoded and trainer.global_step != self._last_step:
            self._last_step = trainer.global_step
            self.log_scores(trainer, pl_module, trainer.global_step)

    def scores(self, trainer, pl_module) -> dict[str, dict]:
        """Every task's metrics for the model as it is now; every rank calls this together."""
        sharded = isinstance(trainer.strategy, FSDPStrategy)
        # Under FSDP only the root module's forward gathers the weights: call it, on every
        # rank the same number of times (lockstep). Elsewhere, the GPT itself.
        module = trainer.strategy.model if sharded else pl_module.gpt
        was_training = pl_module.training
        pl_module.eval()
        try:
            with (
                torch.compiler.set_stance("force_eager"),
                trainer.precision_plugin.forward_context(),
            ):
                return run_tasks(
                    lambda idx: module(idx)[0],
                    self._encoded,
                    pl_module.device,
                    self.batch_size,
                    rank=trainer.global_rank,
                    world_size=trainer.world_size,
                    reduce=_sum_over_ranks(trainer) if trainer.world_size > 1 else None,
                    lockstep=sharded,
                )
        finally:
            pl_module.train(was_training)

    def log_scores(self, trainer, pl_module, step: int) -> None:
        results = self.scores(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        metrics = {
            f"eval/{task}/{key}": value
            for task, values in results.items()
            for key, value in values.items()
            if key != "n" and not key.endswith("_stderr")
        }
        if trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=step)
        summary = ", ".join(f"{key.removeprefix('eval/')} {v:.4f}" for key, v in metrics.items())
        rank_zero_only(log.info)(f"downstream at step {step}: {summary}")


def resumed_at_a_multiple(trainer, every_n_steps: int) -> bool:
    """Training starts at a step > 0 that is a multiple of ``every_n_steps``: a resumed run
    whose checkpoint was saved at a step where a callback logged."""
    step = trainer.global_step
    return bool(every_n_steps and step and step % every_n_steps == 0)


def _sum_over_ranks(trainer):
    return lambda tensor: trainer.strategy.reduce(tensor, reduce_op="sum")
