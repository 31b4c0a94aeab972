"""What one optimizer step dispatches: the aten ops of fused AdamW against Muon's, per config.

Each row builds the config's GPT on the CPU (real tensors, the config's own init), gives every
parameter a random gradient, takes one warm-up step (which creates the optimizer's state),
then counts the aten ops that one ``optimizer.step()`` dispatches, with the divergence guard's
``found_inf`` flag set as in training. Matmuls are the mm, bmm, addmm, baddbmm and matmul ops
among them. The counts do not depend on the device or the threads: each op is one kernel
launch (or more) on a GPU, and each rank of a DDP run repeats them.

    python -m lit_gpt_scratch.bench.optimizer_ops                                # 124m-modern
    python -m lit_gpt_scratch.bench.optimizer_ops --configs configs/tiny-modern.yaml
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lit_gpt_scratch.bench.train import print_report
from lit_gpt_scratch.model.build import build_gpt, gpt_spec_from_config
from lit_gpt_scratch.train.optimizers import AdamW, Muon
from lit_gpt_scratch.train.param_groups import param_groups

MATMULS = {"mm", "bmm", "addmm", "baddbmm", "matmul"}
OPTIMIZERS = {"AdamW": AdamW, "Muon": Muon}


class CountOps(TorchDispatchMode):
    """Counts every aten op dispatched inside it, by name (``mm``, ``_foreach_mul_``...)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    @property
    def matmuls(self) -> int:
        return sum(n for name, n in self.ops.items() if name in MATMULS)


def random_grads(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def count_step_ops(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> CountOps:
    """The ops of one ``optimizer.step()`` after a warm-up step, gradients random, the guard's
    flag set (not raised)."""
    optimizer.found_inf = torch.zeros(())
    random_grads(model, 0)
    optimizer.step()
    random_grads(model, 1)
    with CountOps() as counter:
        optimizer.step()
    return counter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["configs/124m-modern.yaml"])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    rows = []
    for path in args.configs:
        torch.manual_seed(0)
        gpt = build_gpt(gpt_spec_from_config(path))
        name = path.rsplit("/", 1)[-1].removesuffix(".yaml")
        for optimizer in args.optimizers:
            groups = param_groups(gpt)
            matrices = len(groups[0]["params"]) if optimizer == "Muon" else 0
            counter = count_step_ops(OPTIMIZERS[optimizer](groups), gpt)
            tensors = sum(len(g["params"]) for g in groups)
            rows.append(
                f"| {name} | {optimizer} | {tensors} | {matrices} "
                f"| {counter.ops.total():,} | {counter.matmuls:,} |"
            )
    note = "aten ops of one optimizer.step() after a warm-up step (found_inf set, not raised)"
    columns = ["config", "optimizer", "#tensors", "#Muon matrices", "#aten ops", "#matmuls"]
    print_report(argv, "optimizer_ops", torch.device("cpu"), note, columns, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
