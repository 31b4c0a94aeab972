"""Callbacks for the multi-process tests, importable by class_path (tests/ on PYTHONPATH):
they write what each rank saw to JSON files the test reads after the processes end."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from lit_gpt_scratch.train.distributed import unwrapped_name


def write_rank_file(out: str, trainer, record) -> None:
    Path(f"{out}-rank{trainer.global_rank}.json").write_text(json.dumps(record))


class RecordLosses(L.Callback):
    """``{out}-rank{r}.json``: this rank's training loss and gradient norm (before clipping,
    as the divergence guard and clipping use it) at each optimizer step, by step."""

    def __init__(self, out: str):
        self.out, self.losses, self.grad_norms = out, {}, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step - 1  # the step just taken
        self.losses[step] = outputs["loss"].item()
        if pl_module._grad_norm is not None:
            self.grad_norms[step] = pl_module._grad_norm.item()

    def on_train_end(self, trainer, pl_module) -> None:
        write_rank_file(self.out, trainer, {"loss": self.losses, "grad_norm": self.grad_norms})


class RecordSetup(L.Callback):
    """``{out}-rank{r}.json``, after the first step: the optimizer's param groups as the run
    built them (role, weight decay, parameter names as the unwrapped model has them, tensor
    dims), and the dtypes the first step ran in (a block's weights inside its forward, the
    position buffers), with the FSDP mixed-precision policy's reduce dtype."""

    def __init__(self, out: str):
        self.out, self.record = out, {}

    def on_train_start(self, trainer, pl_module) -> None:
        names = {id(p): unwrapped_name(n) for n, p in pl_module.gpt.named_parameters()}
        self.record["groups"] = [
            {
                "role": group["role"],
                "weight_decay": group["weight_decay"],
                "names": [names[id(p)] for p in group["params"]],
                "dims": [p.dim() for p in group["params"]],
            }
            for group in trainer.optimizers[0].param_groups
        ]
        policy = getattr(trainer.strategy.model, "mixed_precision", None)
        self.record["reduce_dtype"] = str(getattr(policy, "reduce_dtype", None))
        attention = next(m for n, m in pl_module.gpt.named_modules() if n.endswith("attn"))

        def weight_dtype(module, args):
            self.record.setdefault("weight_dtype", str(module.c_attn.weight.dtype))

        self._hook = attention.register_forward_pre_hook(weight_dtype)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if "buffer_dtypes" in self.record:
            return
        self._hook.remove()
        buffers = dict(pl_module.gpt.position.named_buffers())
        self.record["buffer_dtypes"] = {k: str(b.dtype) for k, b in buffers.items()}
        write_rank_file(self.out, trainer, self.record)  # now: a later step may fail


class PoisonOneRank(L.Callback):
    """On rank ``rank`` only: a NaN into this rank's part of a gradient after the backward of
    step ``grad_step``, and into its part of a weight at the end of step ``weight_step``
    (before that step's checkpoint is saved). Under FSDP the other ranks hold other shards
    and see neither. ``{out}-rank{r}.json``, rewritten after every step: the run's skipped
    steps so far, by step."""

    def __init__(self, out: str, rank: int = 1, grad_step: int = -1, weight_step: int = -1):
        self.out, self.rank = out, rank
        self.grad_step, self.weight_step = grad_step, weight_step
        self.skipped: dict[int, int] = {}

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.grad_step:
            grad = next(p.grad for p in pl_module.gpt.parameters() if _holds(p.grad))
            grad.view(-1)[0] = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step - 1  # the step just taken
        if trainer.global_rank == self.rank and step == self.weight_step:
            with torch.no_grad():
                weight = next(p for p in pl_module.gpt.parameters() if _holds(p))
                weight.view(-1)[0] = float("nan")
        self.skipped[step] = pl_module.divergence.skipped_steps
        write_rank_file(self.out, trainer, self.skipped)


def _holds(tensor) -> bool:
    return tensor is not None and tensor.numel() > 0


class CountGradientAllReduces(L.Callback):
    """``{out}-rank{r}.json``: how many gradient buckets DDP all-reduced during each batch,
    and whether DDP keeps the gradients as views into its buckets."""

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
        bucket_view = trainer.strategy.model.gradient_as_bucket_view
        write_rank_file(self.out, trainer, {"counts": self.counts, "bucket_view": bucket_view})


class RecordBatches(L.Callback):
    """``{out}-rank{r}.json``: every micro-batch this rank trained on, as token lists, with the
    optimizer step it belongs to: ``[[step, [[ids of window 0], ...]], ...]`` in order."""

    def __init__(self, out: str):
        self.out, self.batches = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append([trainer.global_step, batch.tolist()])

    def on_train_end(self, trainer, pl_module) -> None:
        write_rank_file(self.out, trainer, self.batches)
