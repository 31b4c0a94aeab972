"""Timing training steps, shared by the training benchmarks (``train``, ``overhead``, ``data``).

A config's model, optimizer and schedule are built exactly as ``fit`` builds them (through
jsonargparse from the YAML), and fed windows of synthetic tokens through the real data path
(memory-mapped ``TokenStream``, ``WindowSampler``, ``TrainWindows``, a ``DataLoader``). The same
model is trained either by Lightning's Trainer around ``LitGPT`` or by a bare PyTorch loop that
does what a hand-written nanoGPT-style loop does: forward, backward (per micro-batch under
gradient accumulation), clip, step, zero.

Time is measured over windows of optimizer steps, as ``fit`` runs them: the device is
synchronised only at the start and the end of each window of ``Windows.size`` steps (after
``Windows.warmup`` untimed steps), so the host runs ahead of the device inside a window exactly
as it does in training, and whatever host time the device hides stays hidden. A step's time
is its window's time over the window's steps: the wait for data, every framework hook and the
accumulated micro-batches included.
"""

from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch._dynamo
import yaml
from jsonargparse import ArgumentParser
from torch.utils.data import DataLoader

from lit_gpt_scratch.bench.memory import write_data
from lit_gpt_scratch.data.shards import META
from lit_gpt_scratch.data.windows import TokenStream, TrainWindows, WindowSampler
from lit_gpt_scratch.train.module import LitGPT


@dataclass
class Workload:
    """A config's training setup for a benchmark: its sizes and a loader of synthetic tokens."""

    name: str
    config: dict
    block_size: int
    batch_size: int  # windows per micro-batch
    accumulation: int  # micro-batches per optimizer step
    trainer: dict  # the config's trainer section (precision, clipping, logging interval)
    loader: DataLoader

    @property
    def tokens_per_step(self) -> int:
        """Tokens trained on per optimizer step, all micro-batches counted."""
        return self.batch_size * self.block_size * self.accumulation


def workload(
    path: str | Path,
    data_dir: Path,
    batch_size: int | None,
    workers: int | None,
    global_batch_size: int | None = None,
) -> Workload:
    """``path``'s config with its batch size, global batch and loader processes unless
    overridden, on one device."""
    config = load_config(path)
    data = config["data"]
    batch = batch_size or data["batch_size"]
    workers = data.get("num_workers", 0) if workers is None else workers
    vocab = config["model"]["gpt"]["init_args"]["vocab_size"]
    loader = synthetic_loader(data_dir, vocab, data["block_size"], batch, workers)
    trainer = config.get("trainer", {})
    accumulate = accumulation(config, batch, global_batch_size)
    return Workload(Path(path).stem, config, data["block_size"], batch, accumulate, trainer, loader)


def accumulation(config: dict, batch_size: int, global_batch_size: int | None = None) -> int:
    """Micro-batches per optimizer step on one device, as ``fit`` sets them:
    ``global_batch_size`` (``global_batch_size`` if given, else the config's) / ``batch_size``,
    else the config's ``trainer.accumulate_grad_batches``."""
    given = config.get("trainer", {}).get("accumulate_grad_batches", 1)
    global_batch = global_batch_size or config.get("global_batch_size")
    if global_batch is None:
        return given
    accumulate, rest = divmod(global_batch, batch_size)
    if rest or not accumulate:
        raise ValueError(
            f"global batch {global_batch} is not a multiple of the batch size {batch_size}"
        )
    if global_batch_size is None and given not in (1, accumulate):
        raise ValueError(
            f"trainer.accumulate_grad_batches {given} contradicts global_batch_size "
            f"{global_batch} ({batch_size} x {accumulate})"
        )
    return accumulate


def load_config(path: str | Path) -> dict:
    config = yaml.safe_load(Path(path).read_text())
    spec = config["model"]["gpt"]
    spec.setdefault("init_args", {})["block_size"] = config["data"]["block_size"]
    return config


def build_module(config: dict, compile: bool, seed: int = 0, backend: str | None = None) -> LitGPT:
    """``LitGPT`` from the config's ``model:`` section, seeded: every call, the same weights.
    ``compile`` and ``backend`` (e.g. ``aot_eager``, no code generation) set its
    ``model.compile`` and ``model.compile_backend``; it compiles itself, as in ``fit``.

    Dynamo's caches are reset first, so a compiled module compiles afresh: otherwise each new
    module recompiles the same code objects and, past Dynamo's recompile limit, silently runs
    eager.
    """
    torch._dynamo.reset()
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(LitGPT, "model", fail_untyped=False)  # as LightningCLI does
    model = copy.deepcopy(config["model"])
    model["compile"] = compile
    if backend is not None:
        model["compile_backend"] = backend
    cfg = parser.parse_object({"model": model})
    torch.manual_seed(seed)
    module = parser.instantiate_classes(cfg).model
    # The YAML specs as hyperparameters, as under the CLI: the logger writes these, not the
    # objects built from them (dumping those took seconds of each run's start).
    module.save_hyperparameters(model)
    return module


def compiled_graphs() -> int:
    """Graphs Dynamo has compiled in this process so far (not reset by ``dynamo.reset``)."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


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


# --- windows of optimizer steps -------------------------------------------------------------


@dataclass(frozen=True)
class Windows:
    """``warmup`` untimed optimizer steps (compilation, allocator, caches), then ``count``
    timed windows of ``size`` optimizer steps each."""

    warmup: int = 10
    size: int = 10
    count: int = 3

    def __post_init__(self):
        if self.warmup < 0 or self.size < 1 or self.count < 1:
            raise ValueError(f"no timed window: {self}")

    @property
    def steps(self) -> int:
        return self.warmup + self.size * self.count

    def describe(self) -> str:
        return (
            f"median over {self.count} windows of {self.size} optimizer steps, the device "
            f"synchronised only at each window's ends, after {self.warmup} warm-up steps"
        )


@dataclass
class WindowTimes:
    """Per timed window: seconds per optimizer step, and seconds per optimizer step spent
    waiting for batches (the bare loop's ``next()`` and host-to-device copy; 0 otherwise)."""

    step: list[float] = field(default_factory=list)
    wait: list[float] = field(default_factory=list)

    def __iadd__(self, other: WindowTimes) -> WindowTimes:
        self.step += other.step
        self.wait += other.wait
        return self

    @property
    def median_step(self) -> float:
        return statistics.median(self.step)

    @property
    def median_wait(self) -> float:
        return statistics.median(self.wait)


class _WindowClock:
    """Told each optimizer step's end, it synchronises the device and reads the clock at the
    windows' boundaries only."""

    def __init__(self, windows: Windows, device: torch.device):
        self.windows, self.device = windows, device
        self.times = WindowTimes()
        self._start: float | None = None
        self._waited = 0.0

    def waited(self, seconds: float) -> None:
        self._waited += seconds

    def steps_done(self, steps: int) -> None:
        """``steps`` optimizer steps have been queued since the start."""
        w = self.windows
        if steps < w.warmup or (steps - w.warmup) % w.size or steps > w.steps:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self._start is not None:
            self.times.step.append((now - self._start) / w.size)
            self.times.wait.append(self._waited / w.size)
        self._start, self._waited = now, 0.0


class _WindowCallback(L.Callback):
    def __init__(self, clock: _WindowClock):
        self.clock = clock
        self._seen = -1

    def on_train_start(self, trainer, pl_module) -> None:
        self._step_end(trainer)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self._step_end(trainer)  # under accumulation, after the optimizer step's last batch

    def _step_end(self, trainer) -> None:
        if trainer.global_step != self._seen:
            self._seen = trainer.global_step
            self.clock.steps_done(trainer.global_step)


def lightning_step_times(
    module: LitGPT, w: Workload, windows: Windows, precision: str, accelerator: str
) -> WindowTimes:
    """``Trainer.fit`` for ``windows.steps`` optimizer steps, as the CLI's fit runs it (its
    throughput and learning-rate callbacks, a TensorBoard logger, a progress bar), with the
    config's gradient clipping and logging interval and ``w.accumulation`` micro-batches per
    optimizer step."""
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import TensorBoardLogger

    from lit_gpt_scratch.train.callbacks import TokenThroughput
    from lit_gpt_scratch.train.console import ProgressBar

    device = torch.device("cuda" if accelerator in ("cuda", "gpu") else accelerator)
    clock = _WindowClock(windows, device)
    with tempfile.TemporaryDirectory() as logs:
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=1,
            precision=precision,
            max_steps=windows.steps,
            accumulate_grad_batches=w.accumulation,
            gradient_clip_val=w.trainer.get("gradient_clip_val"),
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            logger=TensorBoardLogger(logs, name="bench"),
            callbacks=[
                TokenThroughput(),
                LearningRateMonitor("step"),
                ProgressBar(),
                _WindowCallback(clock),
            ],
            log_every_n_steps=w.trainer.get("log_every_n_steps", 50),
        )
        trainer.fit(module, train_dataloaders=w.loader)
    return clock.times


def bare_step_times(
    module: LitGPT, w: Workload, windows: Windows, precision: str, device: torch.device
) -> WindowTimes:
    """A hand-written loop over the same model, optimizer, schedule and micro-batches: each
    micro-batch's loss / accumulation backward, then one clipped optimizer step."""
    if module.compile_model:
        module.gpt.compile(**module.compile_options)  # in place, as LitGPT.configure_model
    gpt = module.gpt.to(device).train()
    optimizer, scheduler = module.build_optimizer(windows.steps)
    clip = w.trainer.get("gradient_clip_val")
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16-mixed"
        else nullcontext()
    )
    clock, it = _WindowClock(windows, device), iter(w.loader)
    clock.steps_done(0)
    for step in range(windows.steps):
        for _ in range(w.accumulation):
            start = time.perf_counter()
            batch = next(it).to(device, non_blocking=True)
            clock.waited(time.perf_counter() - start)
            x, y = batch[:, :-1], batch[:, 1:]
            with autocast:
                _, loss = gpt(x, y)
            (loss / w.accumulation).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(gpt.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        clock.steps_done(step + 1)
    return clock.times
