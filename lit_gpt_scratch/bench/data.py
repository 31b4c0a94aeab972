"""Data loading: how fast the training data path delivers batches alone, and what share of a
training step waits for it.

The loader reads synthetic tokens through the real path (memory-mapped ``TokenStream``,
``WindowSampler``, ``TrainWindows``, ``DataLoader``). "Alone" iterates it with no model;
"wait" is the time a bare training loop blocks in ``next()`` for its batch (host to device
copy included), as a share of the step.

    python -m lit_gpt_scratch.bench.data                                   # tiny, CPU
    python -m lit_gpt_scratch.bench.data --configs configs/124m.yaml --workers 4
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from lit_gpt_scratch.bench.step_timing import (
    bare_step_times,
    build_module,
    load_config,
    synthetic_loader,
)
from lit_gpt_scratch.bench.train import common_arguments, header, resolve_device
from lit_gpt_scratch.host_memory import keep_freed_memory


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
    device = resolve_device(args.device)
    keep_freed_memory()  # as fit does
    rows = []
    for path in args.configs:
        config = load_config(path)
        block = config["data"]["block_size"]
        batch = args.batch_size or config["data"]["batch_size"]
        trainer = config.get("trainer", {})
        workers = config["data"].get("num_workers", 0) if args.workers is None else args.workers
        vocab = config["model"]["gpt"]["init_args"]["vocab_size"]
        loader = synthetic_loader(Path(args.data_dir), vocab, block, batch, workers)
        alone = loader_alone(loader, args.batches)
        waits: list[float] = []
        module = build_module(config, compile=False)
        precision = trainer.get("precision", "32-true")
        clip = trainer.get("gradient_clip_val")
        steps = bare_step_times(module, loader, args.steps, precision, device, clip, waits)
        step = statistics.median(steps[args.warmup :])
        wait = statistics.median(waits[args.warmup + 1 :])  # waits[i] belongs to step i
        rows.append(
            f"| {Path(path).stem} | {workers} | {batch} × {block + 1} | {alone:,.0f} | "
            f"{1e3 / alone:.2f} | {step * 1e3:,.1f} | {wait * 1e3:.3f} | {wait / step:.2%} |"
        )
    print(header(argv, "data", device))
    print(f"alone: {args.batches} batches; in the loop: medians of {args.steps - args.warmup} "
          f"steps after {args.warmup} warm-up steps\n")  # fmt: skip
    print("| config | workers | batch (tokens) | alone batches/s | alone ms/batch | step ms |"
          " wait ms/step | wait share |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
