"""A callback for tests: count, per optimizer step, the Python calls that copy a tensor's value
to the host (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``, ``.cpu()``...).

On a GPU each one waits for every queued kernel: the host stops feeding the device. On a CPU
nothing waits, but the calls are the same Python calls, so counting them here finds the code
that would stall a GPU. Reads made by the data path (``lit_gpt_scratch/data/``: the sampler
builds window offsets on the host, before any batch reaches the device) are not counted.
Importable by class_path with tests/ on PYTHONPATH.
"""

from __future__ import annotations

import traceback

import lightning as L
import torch

READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
COUNTERS: list[CountHostReads] = []  # every instance, newest last, for the test to read


class CountHostReads(L.Callback):
    """``reads[step]``: the host reads made while training optimizer step ``step`` (from one
    ``on_train_batch_start`` to the next: hooks, logging and the progress bar included).
    ``where[step]``: for each read, the innermost Lightning, torch.optim or project frames."""

    def __init__(self):
        self.reads: dict[int, int] = {}
        self.where: dict[int, list[str]] = {}
        self._step: int | None = None
        self._originals: dict[str, object] = {}
        COUNTERS.append(self)

    def on_train_start(self, trainer, pl_module) -> None:
        for name in READS:
            original = getattr(torch.Tensor, name)
            self._originals[name] = original
            setattr(torch.Tensor, name, self._counting(original))

    def _counting(self, original):
        def read(tensor, *args, **kwargs):
            if self._step is not None:
                frames = [
                    f"{f.filename}:{f.lineno}"
                    for f in traceback.extract_stack()[:-1]
                    if any(k in f.filename for k in ("lightning", "lit_gpt_scratch", "torch/optim"))
                ]
                if not any("lit_gpt_scratch/data/" in f for f in frames):
                    self.reads[self._step] += 1
                    where = " < ".join(f.rsplit("/", 1)[-1] for f in frames[-1:-4:-1])
                    self.where.setdefault(self._step, []).append(where)
            return original(tensor, *args, **kwargs)

        return read

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step
        self.reads.setdefault(self._step, 0)

    def on_train_end(self, trainer, pl_module) -> None:
        self._step = None
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
