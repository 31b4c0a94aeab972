"""Helpers for the tests that train with several real processes on CPU (gloo): a small ``fit``
in its own processes, and what the probes (``ddp_probes``) wrote for each rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import LOREM, last_checkpoint, small_run_args, write_text_corpus
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TESTS = Path(__file__).resolve().parent
DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
# fp32 on CPU: two ranks sum the same numbers in another order, nothing more.
TOLERANCE = 1e-5


# FSDP on 2 CPU processes: the overlay the large configs use, with the test-only strategy that
# lets Lightning's FSDPStrategy run without a GPU (cpu_fsdp.py).
FSDP = [
    f"--config={TESTS.parent / 'configs/overlays/fsdp.yaml'}",
    f"--config={TESTS / 'cpu_fsdp.yaml'}",
]


def fit(workdir: Path, data_dir: Path, *extra: str, devices: int = 1, batch: int = 8,
        callbacks: str = "", strategy: list[str] = DDP,
        succeed: bool = True) -> subprocess.CompletedProcess:  # fmt: skip
    """One ``fit`` in its own process(es), in ``workdir`` (runs under workdir/checkpoints);
    with ``devices=2``, two processes under ``strategy`` (DDP or FSDP's arguments)."""
    corpus = workdir.parent / "corpus"
    if not corpus.exists():  # written once: prepare refuses sources changed since
        write_text_corpus(corpus, LOREM)
    args = small_run_args(
        corpus,
        data_dir,
        **{
            "data.batch_size": str(batch),
            "trainer.precision": "32-true",
            "trainer.max_steps": "4",
            "samples.every_n_steps": "0",
            "checkpoint.every_n_train_steps": "2",
            "trainer.val_check_interval": "2",
        },
    )
    workdir.mkdir(parents=True, exist_ok=True)
    if callbacks:
        config = workdir / f"callbacks-{len(list(workdir.glob('callbacks-*')))}.yaml"
        config.write_text(f"trainer:\n  callbacks:\n{callbacks}")
        args.append(f"--config={config}")
    result = fit_processes(workdir, [*args, *(strategy if devices == 2 else []), *extra])
    if succeed:
        assert result.returncode == 0, result.stderr[-6000:]
    return result


def fit_processes(cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``python -m lit_gpt_scratch fit ARGS`` (DDP starts its second process itself)."""
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "lit_gpt_scratch", "fit", *args],
        cwd=cwd, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def record_losses(out: Path) -> str:
    return probe("RecordLosses", out)


def rank_records(out: Path, ranks: int = 1) -> list:
    """What a probe wrote for each rank, by rank."""
    return [json.loads(Path(f"{out}-rank{r}.json").read_text()) for r in range(ranks)]


def losses(out: Path, ranks: int = 1) -> dict[int, float]:
    """The per-step training loss, averaged over ranks (equal shares of the global batch)."""
    per_rank = [r["loss"] for r in rank_records(out, ranks)]
    return {int(step): sum(r[step] for r in per_rank) / ranks for step in per_rank[0]}


def grad_norms(out: Path, ranks: int = 1) -> list[dict[int, float]]:
    """The per-step gradient norm (before clipping) that each rank saw."""
    return [{int(k): v for k, v in r["grad_norm"].items()} for r in rank_records(out, ranks)]


def val_losses(workdir: Path) -> list[tuple[int, float]]:
    events = EventAccumulator(str(workdir / "checkpoints/tiny/version_0"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("val/loss")]


def final_weights(workdir: Path) -> dict[str, torch.Tensor]:
    return last_checkpoint(workdir)["state_dict"]


def samples(workdir: Path) -> dict[int, str]:
    """The text samples the run logged to TensorBoard, by step."""
    events = EventAccumulator(str(workdir / "checkpoints/tiny/version_0"))
    events.Reload()
    texts = events.Tensors("samples/text_summary")
    return {e.step: e.tensor_proto.string_val[0].decode() for e in texts}


def probe(name: str, out: Path, **options) -> str:
    """A ``trainer.callbacks`` entry of ``ddp_probes.NAME`` writing to ``out``."""
    args = ", ".join(f"{k}: {v}" for k, v in {"out": out, **options}.items())
    return f"    - class_path: ddp_probes.{name}\n      init_args: {{{args}}}\n"
