"""Data loading: how fast the training data path delivers batches alone, and what share of a
training step waits for it.

The loader reads synthetic tokens through the real path (memory-mapped ``TokenStream``,
``WindowSampler``, ``TrainWindows``, ``DataLoader``). "Alone" iterates it with no model;
"wait" is the time a bare training loop blocks in ``next()`` for its batches (host to device
copy included), summed over an optimizer step's micro-batches, as a share of the step. Both
are medians over windows of ``--window`` optimizer steps, the device synchronised only at each
window's ends: a wait the device hides (the host ahead of it) still counts, so the share is
an upper bound on what data costs a step.

    python -m lit_gpt_scratch.bench.data                                   # tiny, CPU
    python -m lit_gpt_scratch.bench.data --configs configs/124m.yaml --workers 4
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lit_gpt_scratch.bench.step_timing import bare_step_times, build_module, workload
from lit_gpt_scratch.bench.train import common_arguments, print_report, start, windows


def loader_alone(loader, batches: int) -> float:
    """Batches per second of the loader with nothing else running (after one warm-up pass
    of the workers)."""
    it = iter(loader)
    for _ in range(min(batches, 20)):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=500, help="batches timed alone")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    device, plan = start(args), windows(args)
    rows = []
    for path in args.configs:
        w = workload(path, Path(args.data_dir), args.batch_size, args.workers,
                     args.global_batch_size)  # fmt: skip
        alone = loader_alone(w.loader, args.batches)
        module = build_module(w.config, compile=False)
        precision = w.trainer.get("precision", "32-true")
        times = bare_step_times(module, w, plan, precision, device)
        step, wait = times.median_step, times.median_wait
        rows.append(
            f"| {w.name} | {w.loader.num_workers} | {w.batch_size} × {w.block_size + 1} | "
            f"{w.accumulation} | {alone:,.0f} | {1e3 / alone:.2f} | {step * 1e3:,.1f} | "
            f"{wait * 1e3:.3f} | {wait / step:.2%} |"
        )
    note = f"alone: {args.batches} batches; in the loop: {plan.describe()}"
    columns = ["config", "#workers", "batch (tokens)", "#accumulation", "#alone batches/s",
               "#alone ms/batch", "#step ms", "#wait ms/step", "#wait share"]  # fmt: skip
    print_report(argv, "data", device, note, columns, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
