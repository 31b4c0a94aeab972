"""Lightning's overhead: the same model, data, optimizer, schedule and micro-batches trained by
Lightning's Trainer (as ``fit`` runs it) and by a bare PyTorch loop, in the same process.

Runs alternate (bare, Lightning, bare, Lightning, ...) for ``--rounds`` rounds so that drifts of
the machine fall on both; each run times ``--windows`` windows of ``--window`` optimizer steps
after ``--warmup`` steps (the device synchronised only at each window's ends), and each side's
figure is the median over all its windows. Every run builds and compiles its model afresh.

    python -m lit_gpt_scratch.bench.overhead                          # tiny, CPU
    python -m lit_gpt_scratch.bench.overhead --configs configs/124m.yaml --precision bf16-mixed
"""

from __future__ import annotations

import sys
from pathlib import Path

from lit_gpt_scratch.bench.step_timing import (
    WindowTimes,
    bare_step_times,
    build_module,
    lightning_step_times,
    workload,
)
from lit_gpt_scratch.bench.train import (
    common_arguments,
    compile_arguments,
    print_report,
    start,
    windows,
)


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", help="default: the config's trainer.precision")
    parser.add_argument("--compile", choices=["off", "on"], default="off")
    compile_arguments(parser)
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    device, plan = start(args), windows(args)
    compile = args.compile == "on"
    rows = []
    for path in args.configs:
        w = workload(path, Path(args.data_dir), args.batch_size, args.workers,
                     args.global_batch_size)  # fmt: skip
        precision = args.precision or w.trainer.get("precision", "32-true")
        bare, lightning = WindowTimes(), WindowTimes()
        for _ in range(args.rounds):
            module = build_module(w.config, compile, backend=args.compile_backend)
            bare += bare_step_times(module, w, plan, precision, device)
            module = build_module(w.config, compile, backend=args.compile_backend)
            lightning += lightning_step_times(module, w, plan, precision, device.type)
        b, lt = bare.median_step, lightning.median_step
        rows.append(
            f"| {w.name} | {precision} | {args.compile} | {w.batch_size} × {w.block_size} | "
            f"{w.accumulation} | {b * 1e3:,.1f} | {lt * 1e3:,.1f} | {lt / b - 1:+.1%} |"
        )
    note = f"{args.rounds} alternating rounds each side; {plan.describe()}"
    columns = ["config", "precision", "compile", "#batch", "#accumulation",
               "#bare loop ms/step", "#Lightning ms/step", "#overhead"]  # fmt: skip
    print_report(argv, "overhead", device, note, columns, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
