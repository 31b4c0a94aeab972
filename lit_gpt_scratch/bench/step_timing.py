"""Timing training steps, shared by the training benchmarks (``train``, ``overhead``, ``data``).

A config's model, optimizer and schedule are built exactly as ``fit`` builds them (through
jsonargparse from the YAML), and fed windows of synthetic tokens through the real data path
(memory-mapped ``TokenStream``, ``WindowSampler``, ``TrainWindows``, a ``DataLoader``). The same
model is trained either by Lightning's Trainer around ``LitGPT`` or by a bare PyTorch loop that
does what a hand-written nanoGPT-style loop does: forward, backward, clip, step, zero.

A step's time is the gap between the ends of two consecutive optimizer steps (the wait for
data and every framework hook included), with the device synchronised at each end.
"""

from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from jsonargparse import ArgumentParser
from torch.utils.data import DataLoader

from lit_gpt_scratch.bench.memory import write_data
from lit_gpt_scratch.data.shards import META
from lit_gpt_scratch.data.tokens import TokenStream, TrainWindows, WindowSampler
from lit_gpt_scratch.lit_module import LitGPT


@dataclass
class Workload:
    """A config's training setup for a benchmark: its sizes and a loader of synthetic tokens."""

    name: str
    config: dict
    block_size: int
    batch_size: int
    trainer: dict  # the config's trainer section (precision, clipping, logging interval)
    loader: DataLoader


def workload(path: str | Path, data_dir: Path, batch_size: int | None, workers: int | None):
    """``path``'s config with its batch size and loader processes unless overridden."""
    config = load_config(path)
    data = config["data"]
    batch = batch_size or data["batch_size"]
    workers = data.get("num_workers", 0) if workers is None else workers
    vocab = config["model"]["gpt"]["init_args"]["vocab_size"]
    loader = synthetic_loader(data_dir, vocab, data["block_size"], batch, workers)
    trainer = config.get("trainer", {})
    return Workload(Path(path).stem, config, data["block_size"], batch, trainer, loader)


def load_config(path: str | Path) -> dict:
    config = yaml.safe_load(Path(path).read_text())
    spec = config["model"]["gpt"]
    spec.setdefault("init_args", {})["block_size"] = config["data"]["block_size"]
    return config


def build_module(config: dict, compile: bool, seed: int = 0) -> LitGPT:
    """``LitGPT`` from the config's ``model:`` section, seeded: every call, the same weights."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(LitGPT, "model", fail_untyped=False)  # as LightningCLI does
    model = copy.deepcopy(config["model"])
    model["compile"] = compile
    cfg = parser.parse_object({"model": model})
    torch.manual_seed(seed)
    return parser.instantiate_classes(cfg).model


def synthetic_loader(
    data_dir: Path, vocab: int, block_size: int, batch_size: int, workers: int, gigabytes=0.25
) -> DataLoader:
    """Training batches of random token ids through the real data path."""
    write_data(data_dir, gigabytes, vocab=vocab)
    shards = json.loads((data_dir / META).read_text())["splits"]["train"]
    stream = TokenStream(data_dir, "train", np.uint16, shards, vocab_size=vocab)
    window = block_size + 1
    return DataLoader(
        TrainWindows(stream, window),
        batch_sampler=WindowSampler(len(stream), window, batch_size, seed=0),
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _StepEnds(L.Callback):
    def __init__(self):
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        _sync(pl_module.device)
        self.ends.append(time.perf_counter())


def lightning_step_times(
    module: LitGPT, loader, steps: int, precision: str, accelerator: str, trainer_config: dict
) -> list[float]:
    """Seconds per step of ``steps`` steps of ``Trainer.fit``, as the CLI's fit runs it (its
    throughput and learning-rate callbacks, a TensorBoard logger, a progress bar), with the
    config's gradient clipping and logging interval."""
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import TensorBoardLogger

    from lit_gpt_scratch.callbacks import ProgressBar, TokenThroughput

    ends = _StepEnds()
    with tempfile.TemporaryDirectory() as logs:
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=1,
            precision=precision,
            max_steps=steps,
            gradient_clip_val=trainer_config.get("gradient_clip_val"),
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            logger=TensorBoardLogger(logs, name="bench"),
            callbacks=[TokenThroughput(), LearningRateMonitor("step"), ProgressBar(), ends],
            log_every_n_steps=trainer_config.get("log_every_n_steps", 50),
        )
        trainer.fit(module, train_dataloaders=loader)
    return list(np.diff(ends.ends))


def bare_step_times(
    module: LitGPT,
    loader,
    steps: int,
    precision: str,
    device: torch.device,
    clip: float | None,
    waits: list[float] | None = None,
) -> list[float]:
    """Seconds per step of a hand-written loop over the same model, optimizer and schedule.
    ``waits``, if given, receives each step's wait for its batch."""
    if module.compile_model:
        module.gpt.compile()
    gpt = module.gpt.to(device).train()
    optimizer, scheduler = module.build_optimizer(steps)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16-mixed"
        else nullcontext()
    )
    ends, it = [], iter(loader)
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(it).to(device, non_blocking=True)
        if waits is not None:
            waits.append(time.perf_counter() - start)
        x, y = batch[:, :-1], batch[:, 1:]
        with autocast:
            _, loss = gpt(x, y)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(gpt.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        ends.append(time.perf_counter())
    return list(np.diff(ends))


def median_after(times: list[float], warmup: int) -> float:
    """Median of the step times after the first ``warmup`` (compilation, allocator, caches)."""
    timed = times[warmup:]
    if not timed:
        raise ValueError(f"no timed steps: {len(times)} steps, warm-up {warmup}")
    return statistics.median(timed)
