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
    load_config,
    synthetic_loader,
)
from lit_gpt_scratch.bench.train import common_arguments, header, resolve_device
from lit_gpt_scratch.host_memory import keep_freed_memory


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", help="default: the config's trainer.precision")
    parser.add_argument("--compile", choices=["off", "on"], default="off")
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
        precision = args.precision or trainer.get("precision", "32-true")
        clip = trainer.get("gradient_clip_val")
        vocab = config["model"]["gpt"]["init_args"]["vocab_size"]
        workers = config["data"].get("num_workers", 0) if args.workers is None else args.workers
        loader = synthetic_loader(Path(args.data_dir), vocab, block, batch, workers)
        bare, lightning = [], []
        for _ in range(args.rounds):
            module = build_module(config, args.compile == "on")
            bare += bare_step_times(module, loader, args.steps, precision, device, clip)[
                args.warmup :
            ]
            module = build_module(config, args.compile == "on")
            lightning += lightning_step_times(
                module, loader, args.steps, precision, device.type, trainer
            )[args.warmup :]
        b, lt = statistics.median(bare), statistics.median(lightning)
        rows.append(
            f"| {Path(path).stem} | {precision} | {args.compile} | {batch} × {block} | "
            f"{b * 1e3:,.1f} | {lt * 1e3:,.1f} | {lt / b - 1:+.1%} |"
        )
    print(header(argv, "overhead", device))
    print(
        f"{args.rounds} alternating rounds of {args.steps} steps each side; medians over the "
        f"steps after {args.warmup} warm-up steps of each round\n"
    )
    print("| config | precision | compile | batch | bare loop ms/step | Lightning ms/step |"
          " overhead |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
