"""Lightning's overhead: the same model, data, optimizer and schedule trained by Lightning's
Trainer (as ``fit`` runs it) and by a bare PyTorch loop, in the same process.

Runs alternate (bare, Lightning, bare, Lightning, ...) for ``--rounds`` rounds so that drifts of
the machine fall on both; each side's figure is the median over all its timed steps.

    python -m lit_gpt_scratch.bench.overhead                          # tiny, CPU
    python -m lit_gpt_scratch.bench.overhead --configs configs/124m.yaml --precision bf16-mixed
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from lit_gpt_scratch.bench.step_timing import (
    bare_step_times,
    build_module,
    lightning_step_times,
    workload,
)
from lit_gpt_scratch.bench.train import common_arguments, print_report, start


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", help="default: the config's trainer.precision")
    parser.add_argument("--compile", choices=["off", "on"], default="off")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    device = start(args)
    rows = []
    for path in args.configs:
        w = workload(path, Path(args.data_dir), args.batch_size, args.workers)
        precision = args.precision or w.trainer.get("precision", "32-true")
        clip = w.trainer.get("gradient_clip_val")
        bare, lightning = [], []
        for _ in range(args.rounds):
            module = build_module(w.config, args.compile == "on")
            bare += bare_step_times(module, w.loader, args.steps, precision, device, clip)[
                args.warmup :
            ]
            module = build_module(w.config, args.compile == "on")
            lightning += lightning_step_times(
                module, w.loader, args.steps, precision, device.type, w.trainer
            )[args.warmup :]
        b, lt = statistics.median(bare), statistics.median(lightning)
        rows.append(
            f"| {w.name} | {precision} | {args.compile} | {w.batch_size} × {w.block_size} | "
            f"{b * 1e3:,.1f} | {lt * 1e3:,.1f} | {lt / b - 1:+.1%} |"
        )
    note = (
        f"{args.rounds} alternating rounds of {args.steps} steps each side; medians over the "
        f"steps after {args.warmup} warm-up steps of each round"
    )
    columns = ["config", "precision", "compile", "#batch", "#bare loop ms/step",
               "#Lightning ms/step", "#overhead"]  # fmt: skip
    print_report(argv, "overhead", device, note, columns, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
