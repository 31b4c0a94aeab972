"""Host-device synchronisations per training step of a short ``fit``: on CUDA, every one that
``torch.cuda.set_sync_debug_mode("warn")`` reports; on any device, the host reads (``.item()``,
``float(t)``, ``.tolist()``...) and ``torch.distributed`` barriers that
``bench.host_syncs.CountHostSyncs`` counts, the calls that stall a GPU.

Runs the command line's ``fit`` in this process on the config's model and tokenizer, with this
package's own ``.py`` files as a small local corpus, for ``--steps`` optimizer steps (the
config's global batch unless ``--global_batch_size``), logging every ``--log_every`` steps,
with no validation, text samples or checkpoints inside the counted steps. Steps are grouped:
the first (compilation, warm-up), the logging steps, the last (the run's end) and all the
others, which should not synchronise at all.

    python -m lit_gpt_scratch.bench.syncs --config configs/124m.yaml --global_batch_size 32
    python -m lit_gpt_scratch.bench.syncs --config configs/tiny.yaml --device cpu  # reads only
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import tempfile
from pathlib import Path

import yaml

from lit_gpt_scratch.bench.host_syncs import read_counts
from lit_gpt_scratch.bench.train import print_report, resolve_device

PACKAGE = Path(__file__).resolve().parents[1]


def fit_arguments(args, work: Path, device: str, counts: Path) -> list[str]:
    """``fit``'s command line: the config, the local corpus, the counter, no extras."""
    callback = work / "count.yaml"
    init = {"out": str(counts), "cuda_sync_debug": device == "cuda"}
    spec = {"class_path": "lit_gpt_scratch.bench.host_syncs.CountHostSyncs", "init_args": init}
    callback.write_text(yaml.safe_dump({"trainer": {"callbacks": [spec]}}))
    overrides = {
        "data.sources": f"[{PACKAGE}/**/*.py]",
        "data.data_dir": str(work / "data"),
        "data.val_fraction": "0.2",
        "data.val_windows": "4",
        "data.prepare_workers": "0",
        "trainer.accelerator": "gpu" if device == "cuda" else device,
        "trainer.devices": "1",
        "trainer.max_steps": str(args.steps),
        "trainer.log_every_n_steps": str(args.log_every),
        "throughput.every_n_steps": str(args.log_every),
        "trainer.limit_val_batches": "0",
        "trainer.enable_progress_bar": "true",
        "trainer.logger.init_args.save_dir": str(work / "checkpoints"),
        "samples.every_n_steps": "0",
        "checkpoint.every_n_train_steps": "0",
    }
    if args.batch_size:
        overrides["data.batch_size"] = str(args.batch_size)
    if args.global_batch_size:
        overrides["global_batch_size"] = str(args.global_batch_size)
    if args.compile != "config":
        overrides["model.compile"] = "true" if args.compile == "on" else "false"
    config = str(Path(args.config).resolve())
    return ["fit", f"--config={config}", f"--config={callback}",
            *(f"--{k}={v}" for k, v in overrides.items())]  # fmt: skip


def groups(steps: int, log_every: int) -> dict[str, list[int]]:
    """The steps of each kind (keys are ``global_step`` before the step)."""
    logging = [s for s in range(1, steps - 1) if (s + 1) % log_every == 0]
    between = [s for s in range(1, steps - 1) if s not in logging]
    return {
        "first step (compilation, warm-up)": [0],
        "between logging steps": between,
        "logging steps": logging,
        "last step (the run's end)": [steps - 1],
    }


def spread(counts: dict[int, int], steps: list[int]) -> str:
    values = [counts.get(s, 0) for s in steps]
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}–{high}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps")
    parser.add_argument("--log_every", type=int, default=4)
    parser.add_argument("--batch_size", type=int, help="per micro-batch (default: the config's)")
    parser.add_argument("--global_batch_size", type=int, help="default: the config's")
    parser.add_argument("--compile", choices=["config", "on", "off"], default="config")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--where", type=int, default=5, help="origins listed per kind")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if args.steps < 3 or args.log_every < 2:
        parser.error("--steps at least 3 and --log_every at least 2: no step between logging")
    device = resolve_device(args.device)

    from lit_gpt_scratch.cli.main import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        counts_path = work / "counts/fit"
        fit = fit_arguments(args, work, device.type, counts_path)
        with contextlib.chdir(work):  # anything fit writes beside its run stays in tmp
            code = cli(fit)
        if code:
            print(f"fit exited with code {code}", file=sys.stderr)
            return code
        counts = read_counts(f"{counts_path}-rank0.json")

    cuda = device.type == "cuda"
    rows, origins = [], []
    for kind, steps in groups(args.steps, args.log_every).items():
        if not steps:
            continue
        syncs = spread(counts["syncs"], steps) if cuda else "n/a"
        rows.append(
            f"| {kind} | {', '.join(map(str, steps))} | {syncs} | "
            f"{spread(counts['reads'], steps)} | {spread(counts['barriers'], steps)} |"
        )
        if kind.startswith("first"):
            continue  # compilation and first-use syncs: not the steady state
        where = counts["sync_where"] if cuda else counts["where"]
        common = collections.Counter(w for s in steps for w in where.get(s, []))
        for origin, n in common.most_common(args.where):
            origins.append(f"- {kind}: {n} × `{origin}`")
    what = "CUDA syncs (sync debug mode)" if cuda else "host reads (on CPU: no CUDA syncs)"
    note = (
        f"{args.steps} optimizer steps of fit, logging every {args.log_every}; per step: "
        f"min–max over the steps of each kind; origins of the {what}, innermost frames first"
    )
    columns = ["steps", "which", "#CUDA syncs per step", "#host reads per step",
               "#barriers per step"]  # fmt: skip
    print_report(argv, "syncs", device, note, columns, rows)
    print("\n" + ("\n".join(origins) if origins else "- none after the first step"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
