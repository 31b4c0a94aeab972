"""What a run prints: the progress of training, a summary of the model, and nothing of
Lightning's that reads as a problem when it is not one.

- ``ProgressBar``: progress in optimizer steps. In a terminal, a TQDM bar; in a log file (CI,
  SLURM, ``> train.log``), one plain line per logging step and per validation, since every
  redraw of a bar would be a line of its own there.
- ``ModelSummary``: the GPT's parts, their parameter counts and the training FLOPs per token,
  in place of Lightning's table (whose FLOPs column reads 0 without an example input).
- ``quiet_lightning()``: the one place that silences Lightning's chatter.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.utilities import rank_zero_info

# Lightning's lines that are advertisements or deprecation notices of its own internals.
SILENCED_LOG_PREFIXES = ("💡 Tip:", "Trainer already configured with model summary callbacks")
SILENCED_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's _pytree on torch 2.13
    r"Checkpoint directory .* exists and is not empty",  # a resume continues its own folder
    r"The dirpath has changed from",  # a resume from outside the runs: the CLI says so itself
)


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(SILENCED_LOG_PREFIXES)


def quiet_lightning() -> None:
    """Lightning's log lines once each, without its advertisements and warnings about itself.

    ``import lightning`` gives the ``lightning`` logger a handler of its own (``INFO: ...``)
    that also propagates to the root logger's, so every line printed twice: it keeps its
    own handler, showing the message alone, and stops propagating."""
    lightning = logging.getLogger("lightning")
    for handler in lightning.handlers:
        handler.setFormatter(logging.Formatter("%(message)s"))
    lightning.propagate = not lightning.handlers
    # on the handlers: a logger's own filters never see its children's records
    for handler in [*lightning.handlers, *logging.getLogger().handlers]:
        if not any(isinstance(f, _DropLines) for f in handler.filters):
            handler.addFilter(_DropLines())
    for message in SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def _human(count: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count:.0f}"


def model_summary(gpt) -> str:
    """A few lines: the GPT's parts (class, parameters) and its training cost per token."""
    from lit_gpt_scratch.train.callbacks import flops_per_token

    tied = gpt.lm_head.weight is gpt.wte.weight
    lines = [
        f"{type(gpt).__name__}: {_human(gpt.num_params())} parameters, "
        f"{_human(flops_per_token(gpt))}FLOP per training token"
    ]
    for name, part in gpt.named_children():
        params = sum(p.numel() for p in part.parameters())
        kind = type(part).__name__
        if name == "blocks":
            kind = f"{len(part)} x {type(part[0]).__name__}"
        if name == "lm_head" and tied:
            lines.append(f"  {name:<10} {kind:<24} tied to wte")
            continue
        lines.append(f"  {name:<10} {kind:<24} {_human(params):>9}")
    return "\n".join(lines)


class ModelSummary(LightningModelSummary):
    """Prints ``model_summary`` of the module's ``gpt`` at the start of fit (rank 0)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        if self._max_depth and trainer.is_global_zero and hasattr(pl_module, "gpt"):
            rank_zero_info(model_summary(pl_module.gpt))


class ProgressBar(TQDMProgressBar):
    """Progress in optimizer steps, showing ``train/loss`` as read on the logging steps only
    (every ``log_every_n_steps``), where Lightning reads the logged metrics anyway.

    A metric logged with ``prog_bar=True`` is read (``.item()``) after every step, and on a GPU
    each read makes the host wait for the device. So the loss is logged without it, and this
    bar reads it at the logging steps. In a terminal the bar still moves every step.

    Args:
        terminal: Draw bars (True) or write one line per logging step (False); None: bars
            when standard output is a terminal.
    """

    def __init__(
        self,
        refresh_rate: int = 1,
        process_position: int = 0,
        leave: bool = False,
        terminal: bool | None = None,
    ):
        super().__init__(refresh_rate, process_position, leave)
        self.terminal = sys.stdout.isatty() if terminal is None else terminal

    # --- no bars at all outside a terminal -------------------------------------------------

    def _no_bar(self) -> Tqdm:
        return Tqdm(disable=True)

    def init_train_tqdm(self) -> Tqdm:
        return super().init_train_tqdm() if self.terminal else self._no_bar()

    def init_validation_tqdm(self) -> Tqdm:
        return super().init_validation_tqdm() if self.terminal else self._no_bar()

    def init_sanity_tqdm(self) -> Tqdm:
        return super().init_sanity_tqdm() if self.terminal else self._no_bar()

    def init_test_tqdm(self) -> Tqdm:
        return super().init_test_tqdm() if self.terminal else self._no_bar()

    def init_predict_tqdm(self) -> Tqdm:
        return super().init_predict_tqdm() if self.terminal else self._no_bar()

    # --- training: counted in optimizer steps -----------------------------------------------

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            metrics["train/loss"] = f"{loss.item():.3f}"
        return metrics

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._seen_step = trainer.global_step  # the optimizer step count at the last batch end
        self._line_step, self._line_time = trainer.global_step, time.perf_counter()

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        # Lightning counts micro-batches against max_steps, wrong under accumulation.
        bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)
        bar.initial = bar.n = trainer.global_step  # a resumed run starts at its step
        bar.set_description("train")
        bar.unit = "step"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # Under gradient accumulation only the last micro-batch of a step moves the count: the
        # ones before a logging step share its count, but Lightning reads nothing there.
        stepped, self._seen_step = trainer.global_step != self._seen_step, trainer.global_step
        if not stepped or not self.is_enabled:
            return
        step = trainer.global_step
        logging_step = step % max(trainer.log_every_n_steps, 1) == 0 or step == trainer.max_steps
        if not self.terminal:
            if logging_step:
                loss = trainer.callback_metrics.get("train/loss")
                self._write_line(trainer, {"train/loss": loss})
            return
        bar = self.train_progress_bar
        if bar is None or bar.disable or (step % self.refresh_rate and not logging_step):
            return
        bar.n = step
        if logging_step:
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # also refreshes
        else:
            bar.refresh()

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.terminal or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self.is_enabled:
            metrics = trainer.callback_metrics
            self._write_line(trainer, {k: v for k, v in metrics.items() if k.startswith("val/")})

    def _write_line(self, trainer, metrics: dict) -> None:
        """``step 40/600  train/loss 7.630  6.2 steps/s  eta 1:30``: one line, flushed."""
        step, total = trainer.global_step, trainer.max_steps
        parts = [f"step {step}/{total}" if total > 0 else f"step {step}"]
        parts += [f"{name} {_number(v)}" for name, v in metrics.items() if v is not None]
        now = time.perf_counter()
        if step > self._line_step:
            rate = (step - self._line_step) / max(now - self._line_time, 1e-9)
            parts.append(f"{rate:.3g} steps/s")
            if total > 0:
                parts.append(f"eta {_clock((total - step) / rate)}")
            self._line_step, self._line_time = step, now
        print("  ".join(parts), flush=True)


def _number(value) -> str:
    value = float(value)
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
