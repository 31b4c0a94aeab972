"""Training speed: tokens/s and MFU of a config under Lightning, eager against compiled and fp32
against bf16-mixed.

Each row trains the config's model with ``Trainer.fit`` on synthetic tokens (see
``step_timing``): ``--warmup`` optimizer steps, then ``--windows`` windows of ``--window`` steps
with the device synchronised only at each window's ends; a row's step time is the median over
its windows of window time / steps. A step is an optimizer step: under the config's
``global_batch_size`` (or ``--global_batch_size``) it accumulates global batch / batch size
micro-batches, and tokens/s counts them all. Each row compiles afresh (``graphs``: the graphs
Dynamo compiled for it; 0 would mean the row ran eager). MFU is
6N + 12·L·H·Q·T FLOPs per token over the device's dense bf16 peak, on GPUs whose peak is
known; on a CPU it is "n/a", never a guessed peak.

    python -m lit_gpt_scratch.bench.train                                      # tiny, CPU
    python -m lit_gpt_scratch.bench.train --configs configs/124m.yaml --global_batch_size 64
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
from pathlib import Path

import lightning
import torch

from lit_gpt_scratch.bench.step_timing import (
    Windows,
    build_module,
    compiled_graphs,
    lightning_step_times,
    workload,
)
from lit_gpt_scratch.bench.tokenize import cpu_model
from lit_gpt_scratch.train.callbacks import device_peak_flops, flops_per_token
from lit_gpt_scratch.train.host_memory import keep_freed_memory


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def header(argv: list[str], module: str, device: torch.device) -> str:
    command = f"python -m lit_gpt_scratch.bench.{module} " + shlex.join(argv)
    return (
        f"device: {device_name(device)} · Python {platform.python_version()} · torch "
        f"{torch.__version__} · lightning {lightning.__version__}\ncommand: {command.strip()}"
    )


def print_report(argv, module: str, device, note: str, columns: list[str], rows: list[str]):
    """The benchmark's header (device, versions, command), a note, then its table. Columns
    whose name starts with "#" are numbers: right-aligned, the "#" dropped."""
    print(header(argv, module, device))
    print(f"{note}\n")
    print("| " + " | ".join(c.lstrip("#") for c in columns) + " |")
    print("|" + "|".join("---:" if c.startswith("#") else "---" for c in columns) + "|")
    print("\n".join(rows))


def common_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--configs", nargs="+", default=["configs/tiny.yaml"])
    parser.add_argument("--warmup", type=int, default=10, help="untimed optimizer steps first")
    parser.add_argument("--window", type=int, default=10, help="optimizer steps per window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows per run")
    parser.add_argument("--batch_size", type=int, help="per micro-batch (default: the config's)")
    parser.add_argument(
        "--global_batch_size",
        type=int,
        help="windows per optimizer step, a multiple of the batch size (default: the config's "
        "global_batch_size; without one, its trainer.accumulate_grad_batches)",
    )
    parser.add_argument("--workers", type=int, help="loader processes (default: the config's)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--data_dir", default="/tmp/lit-gpt-bench-data")
    return parser


def compile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile_backend",
        help="torch.compile backend for the compiled rows (default: LitGPT's, as in fit; "
        "aot_eager or eager compile quickly, for checks)",
    )


def windows(args) -> Windows:
    return Windows(args.warmup, args.window, args.windows)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def start(args) -> torch.device:
    """The device, set up as ``fit`` sets it up (allocator; TF32 on CUDA, as LitGPT does)."""
    device = resolve_device(args.device)
    keep_freed_memory()
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    return device


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(__doc__.split("\n")[0])
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"])
    compile_arguments(parser)
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    device, plan = start(args), windows(args)
    rows = []  # printed at the end, after the Trainer's own output
    for path in args.configs:
        w = workload(path, Path(args.data_dir), args.batch_size, args.workers,
                     args.global_batch_size)  # fmt: skip
        for compile in args.compile:
            for precision in args.precision:
                module = build_module(w.config, compile == "on", backend=args.compile_backend)
                graphs = compiled_graphs()
                times = lightning_step_times(module, w, plan, precision, device.type)
                graphs = compiled_graphs() - graphs if compile == "on" else "–"
                step = times.median_step
                rate = w.tokens_per_step / step
                peak = device_peak_flops(device)
                mfu = f"{rate * flops_per_token(module.gpt) / peak:.1%}" if peak else "n/a"
                rows.append(
                    f"| {w.name} | {module.gpt.num_params() / 1e6:.1f}M | {precision} "
                    f"| {compile} | {graphs} | {w.batch_size} × {w.block_size} "
                    f"| {w.accumulation} | {step * 1e3:,.0f} | {rate:,.0f} | {mfu} |"
                )
    note = f"{plan.describe()}; step: one optimizer step, all its micro-batches"
    columns = ["config", "#parameters", "precision", "compile", "#graphs", "#batch",
               "#accumulation", "#step ms", "#tokens/s", "#MFU"]  # fmt: skip
    print_report(argv, "train", device, note, columns, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
