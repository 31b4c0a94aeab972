"""Counting, per optimizer step, what makes the host wait for the device.

``CountHostSyncs`` is a Lightning callback. While training it counts:

- **reads**: the Python calls that copy a tensor's value to the host (``.item()``, ``float(t)``,
  ``bool(t)``, ``.tolist()``, ``.cpu()``...), the reads of ``torch.distributed`` collectives'
  results included. On a GPU each one waits for every queued kernel: the host stops feeding
  the device. On a CPU nothing waits, but the calls are the same Python calls, so counting them
  there finds the code that would stall a GPU. Reads made by the data path
  (``lit_gpt_scratch/data/``: the sampler builds window offsets on the host, before any batch
  reaches the device) are not counted.
- **barriers**: calls of ``torch.distributed.barrier``, which block the host until every rank
  arrives (Lightning's ``strategy.reduce`` makes one before reducing).
- **syncs** (CUDA only, ``cuda_sync_debug=True``): the warnings of
  ``torch.cuda.set_sync_debug_mode("warn")``, one for each operation that synchronised the host
  with the device, whatever the Python call behind it.

A step runs from one ``on_train_batch_start`` to the next and is keyed by
``trainer.global_step``: under gradient accumulation the micro-batches of one optimizer step
share a key. Use it from a config::

    trainer:
      callbacks:
        - class_path: lit_gpt_scratch.bench.host_syncs.CountHostSyncs
          init_args: {out: counts/fit}
"""

from __future__ import annotations

import json
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
FRAMES = ("lightning", "lit_gpt_scratch", "torch/optim", "torch/distributed")  # shown in where
UNCOUNTED = "lit_gpt_scratch/data/"
SYNC_WARNING = "synchronizing CUDA operation"  # the text of the sync debug mode's warning


class CountHostSyncs(L.Callback):
    """``reads[step]``, ``barriers[step]`` and ``syncs[step]``: the host reads, the
    ``torch.distributed.barrier`` calls and (``cuda_sync_debug``) the CUDA synchronisations made
    while training optimizer step ``step`` (hooks, logging and the progress bar included).
    ``where[step]``: for each read and barrier, its innermost Lightning, torch or project frames;
    ``sync_where[step]`` likewise for each CUDA synchronisation.

    Args:
        out: At train end, write ``{out}-rank{global_rank}.json`` holding the counts, so that a
            test can read each rank's after its processes end.
        cuda_sync_debug: On CUDA, run training under ``torch.cuda.set_sync_debug_mode("warn")``
            and count its warnings (they are not shown); the mode is restored at train end.
            Ignored on other devices.
    """

    def __init__(self, out: str | None = None, cuda_sync_debug: bool = False):
        self.out, self.cuda_sync_debug = out, cuda_sync_debug
        self.reads: dict[int, int] = {}
        self.barriers: dict[int, int] = {}
        self.syncs: dict[int, int] = {}
        self.where: dict[int, list[str]] = {}
        self.sync_where: dict[int, list[str]] = {}
        self._step: int | None = None
        self._restore: list[Callable[[], None]] = []

    # --- patching while training -------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        for name in READS:
            self._patch(torch.Tensor, name, self.reads)
        # Both names: Lightning calls torch.distributed.barrier, torch's own code the module's.
        dist = torch.distributed
        if dist.is_available():
            for owner in (dist, dist.distributed_c10d):
                self._patch(owner, "barrier", self.barriers, "barrier: ")
        if self.cuda_sync_debug and pl_module.device.type == "cuda":
            self._debug_syncs()

    def _patch(self, owner, name: str, counts: dict[int, int], tag: str = "") -> None:
        original = getattr(owner, name)

        def counting(*args, **kwargs):
            if not torch.compiler.is_compiling():  # Dynamo tracing: no host, nothing to count
                self._count(counts, self.where, tag)
            return original(*args, **kwargs)

        setattr(owner, name, counting)
        self._restore.append(lambda: setattr(owner, name, original))

    def _count(self, counts: dict[int, int], where: dict[int, list[str]], tag: str = "") -> None:
        if self._step is None:
            return
        frames = [
            f"{f.filename}:{f.lineno}"
            for f in traceback.extract_stack()
            if f.filename != __file__ and any(k in f.filename for k in FRAMES)
        ]
        if any(UNCOUNTED in f for f in frames):
            return
        counts[self._step] += 1
        innermost = " < ".join(f.rsplit("/", 1)[-1] for f in frames[-1:-4:-1])
        where.setdefault(self._step, []).append(tag + innermost)

    def _debug_syncs(self) -> None:
        catcher = warnings.catch_warnings()  # restores the filters and showwarning on exit
        catcher.__enter__()
        warnings.filterwarnings("always", message=f".*{SYNC_WARNING}")  # every one, not once
        shown = warnings.showwarning

        def showwarning(message, category, *args, **kwargs):
            if SYNC_WARNING in str(message):
                self._count(self.syncs, self.sync_where)
            else:
                shown(message, category, *args, **kwargs)

        warnings.showwarning = showwarning
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")
        self._restore.append(lambda: catcher.__exit__(None, None, None))
        self._restore.append(lambda: torch.cuda.set_sync_debug_mode(mode))

    def _unpatch(self) -> None:
        self._step = None
        while self._restore:
            self._restore.pop()()

    # --- step bookkeeping --------------------------------------------------------------------

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step
        for counts in (self.reads, self.barriers, self.syncs):
            counts.setdefault(self._step, 0)

    def on_train_end(self, trainer, pl_module) -> None:
        self._unpatch()
        if self.out is not None:
            path = Path(f"{self.out}-rank{trainer.global_rank}.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.counts()))

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._unpatch()

    def counts(self) -> dict:
        """Everything counted, as written to ``out`` (JSON turns the steps into strings)."""
        return {
            "reads": self.reads,
            "barriers": self.barriers,
            "syncs": self.syncs,
            "where": self.where,
            "sync_where": self.sync_where,
        }


def read_counts(path: str | Path) -> dict:
    """A file written by ``CountHostSyncs(out=...)``, its steps as ints again."""
    raw = json.loads(Path(path).read_text())
    return {key: {int(step): v for step, v in value.items()} for key, value in raw.items()}
