"""Training speed: tokens/s and MFU of a config under Lightning, eager against compiled and fp32
against bf16-mixed.

Each row trains the config's model for ``--steps`` steps with ``Trainer.fit`` on synthetic
tokens (see ``step_timing``) and reports the median step after ``--warmup`` steps. MFU is
6N + 12·L·H·Q·T FLOPs per token over the device's dense bf16 peak, on GPUs whose peak is
known; on a CPU it is "n/a", never a guessed peak.

    python -m lit_gpt_scratch.bench.train                                      # tiny, CPU
    python -m lit_gpt_scratch.bench.train --configs configs/124m.yaml --batch_size 16
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
    build_module,
    lightning_step_times,
    median_after,
    workload,
)
from lit_gpt_scratch.bench.tokenize import cpu_model
from lit_gpt_scratch.callbacks import device_peak_flops, flops_per_token
from lit_gpt_scratch.host_memory import keep_freed_memory


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
    parser.add_argument("--steps", type=int, default=30, help="steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch_size", type=int, help="per step (default: the config's)")
    parser.add_argument("--workers", type=int, help="loader processes (default: the config's)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--data_dir", default="/tmp/lit-gpt-bench-data")
    return parser


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
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    device = start(args)
    rows = []  # printed at the end, after the Trainer's own output
    for path in args.configs:
        w = workload(path, Path(args.data_dir), args.batch_size, args.workers)
        batch, block = w.batch_size, w.block_size
        for compile in args.compile:
            for precision in args.precision:
                module = build_module(w.config, compile == "on")
                times = lightning_step_times(
                    module, w.loader, args.steps, precision, device.type, w.trainer
                )
                step = median_after(times, args.warmup)
                rate = batch * block / step
                peak = device_peak_flops(device)
                mfu = f"{rate * flops_per_token(module.gpt) / peak:.1%}" if peak else "n/a"
                rows.append(
                    f"| {w.name} | {module.gpt.num_params() / 1e6:.1f}M | {precision} "
                    f"| {compile} | {batch} × {block} | {step * 1e3:,.0f} | {rate:,.0f} | {mfu} |"
                )
    note = f"median of {args.steps - args.warmup} steps after {args.warmup} warm-up steps"
    columns = ["config", "#parameters", "precision", "compile", "#batch", "#step ms",
               "#tokens/s", "#MFU"]  # fmt: skip
    print_report(argv, "train", device, note, columns, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
