"""Full fine-tuning against LoRA: validation loss, memory and step time, from one base model.

A short base run of ``--config`` (``--base_steps``), its weights written to one file, then two
fine-tunes of ``--steps`` from that file, each a ``fit`` in its own process: every weight
trained (a fresh AdamW), and LoRA (``configs/overlays/lora.yaml`` or ``--lora_config``).
``--finetune_config`` files are layered on both fine-tunes (another data section, say chat
data), ``--set KEY=VALUE`` options on all three runs. Per row:

- val loss before (the validation at step 0) and after, from the run's TensorBoard events;
- trainable parameters, and the bytes of weights + gradients + AdamW's two moments (fp32);
- peak resident memory of the fine-tune's process (``ru_maxrss``: the interpreter, the data
  and the libraries included, the same in both rows);
- the median wall time between consecutive logged steps (each step is logged);
- the size of the run's last checkpoint.

    python -m lit_gpt_scratch.bench.lora                                  # tiny, CPU
    python -m lit_gpt_scratch.bench.lora --base_steps 300 --steps 200 \
        --finetune_config configs/sft-tiny.yaml
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from lit_gpt_scratch.bench.train import print_report, resolve_device

OVERLAY = Path(__file__).resolve().parents[2] / "configs/overlays/lora.yaml"
LAST = "checkpoints/last.ckpt"


def fit(folder: Path, configs: list[str], options: list[str]) -> tuple[Path, float]:
    """One ``fit`` in its own process, from the current directory (the configs' relative data
    paths hold), its runs under ``folder``: its run folder and peak RSS (bytes)."""
    args = [arg for config in configs for arg in ("--config", config)]
    runs = [f"--trainer.logger.init_args.save_dir={folder}", f"--trainer.default_root_dir={folder}"]
    command = [sys.executable, "-m", "lit_gpt_scratch", "fit", *args, *options, *runs]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "fit.log", "w") as log:  # Lightning's output: kept out of the report
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak, not all children's
    code = os.waitstatus_to_exitcode(status)
    if code:
        tail = (folder / "fit.log").read_text().strip().splitlines()[-1:]
        raise SystemExit(f"error: {shlex.join(command)} exited {code}: {' '.join(tail)}")
    [run] = sorted(folder.glob("*/version_*"))
    return run, usage.ru_maxrss * 1024  # KiB on Linux


def scalars(run: Path, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return events.Scalars(tag)


def weights_file(run: Path, out: Path) -> Path:
    """The base run's last weights as a weights-only checkpoint: a full fine-tune starts from
    it with a fresh optimizer (a training checkpoint would resume the base run instead)."""
    from lit_gpt_scratch.train.checkpoint_files import load_gpt, save_gpt

    loaded = load_gpt(run / LAST)
    if out.exists():
        out.unlink()
    save_gpt(out, loaded.gpt, loaded.spec, loaded.tokenizer)
    return out


def training_bytes(run: Path) -> tuple[int, int]:
    """Trainable parameters, and fp32 bytes of all weights + the trainable ones' gradient and
    two AdamW moments, from the run's last checkpoint (the merged model counts the weights)."""
    from lit_gpt_scratch.train.checkpoint_files import load_gpt

    ckpt = torch.load(run / LAST, map_location="cpu", weights_only=True)
    trainable = sum(
        p.numel() for state in ckpt["optimizer_states"][0]["state"].values()
        for name, p in state.items() if name == "exp_avg"
    )  # fmt: skip
    weights = sum(p.numel() for p in load_gpt(run / LAST).gpt.parameters())
    return trainable, 4 * (weights + 3 * trainable)


def row(name: str, run: Path, rss: float) -> str:
    val = scalars(run, "val/loss")
    times = [e.wall_time for e in scalars(run, "train/loss")]
    gaps = [b - a for a, b in zip(times[1:], times[2:], strict=False)]  # the first steps warm up
    step_ms = f"{statistics.median(gaps) * 1e3:,.0f}" if gaps else "n/a"
    trainable, state = training_bytes(run)
    size = (run / LAST).stat().st_size
    return (
        f"| {name} | {val[0].value:.4f} | {val[-1].value:.4f} | {trainable:,} | "
        f"{state / 2**20:,.1f} | {rss / 2**20:,.0f} | {step_ms} | {size / 2**20:,.2f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--base_steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps")
    parser.add_argument("--lora_config", default=str(OVERLAY))
    parser.add_argument("--finetune_config", nargs="*", default=[])
    every_run = "fit options for every run, e.g. trainer.precision=32-true"
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help=every_run)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lit-gpt-bench-lora"))
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    device = resolve_device(args.device)
    shutil.rmtree(args.workdir, ignore_errors=True)
    common = [f"--{option}" for option in args.set]
    common += [f"--trainer.accelerator={device.type}", "--trainer.log_every_n_steps=1"]
    base, _ = fit(args.workdir / "base", [args.config],
                  [*common, f"--trainer.max_steps={args.base_steps}"])  # fmt: skip
    start = weights_file(base, args.workdir / "base-weights.ckpt")
    tune = [*common, f"--trainer.max_steps={args.steps}", f"--ckpt_path={start}",
            f"--val_every_n_steps={args.steps}", "--trainer.val_check_interval=null"]  # fmt: skip
    configs = [args.config, *args.finetune_config]
    full, full_rss = fit(args.workdir / "full", configs, tune)
    lora, lora_rss = fit(args.workdir / "lora", [*configs, args.lora_config], tune)
    rows = [row("full fine-tune", full, full_rss), row("LoRA", lora, lora_rss)]
    note = (
        f"base: {args.base_steps} steps of {args.config}; each fine-tune {args.steps} steps "
        "from its weights. training state: fp32 weights + gradients + AdamW moments of the "
        "trainable parameters; peak RSS: the whole process"
    )
    columns = ["run", "#val loss before", "#val loss after", "#trainable", "#state MiB",
               "#peak RSS MiB", "#step ms", "#checkpoint MiB"]  # fmt: skip
    print_report(argv, "lora", device, note, columns, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
