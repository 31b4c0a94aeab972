"""Training callbacks: throughput/MFU and generated text samples in TensorBoard, and a
progress bar that does not stall the GPU.

The first two appear at the top level of a training config (``throughput:``, ``samples:``);
the progress bar replaces Lightning's default one.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

# Dense bf16 peak FLOP/s by GPU name; MFU is logged only for these (on CPU: n/a, not logged).
BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def flops_per_token(gpt) -> float:
    """Training FLOPs per token, as nanoGPT and PaLM count them: 6N for the weights (forward
    and backward) + 12·L·H·Q·T for attention. N counts the rows the head computes, padding
    included, but not a position table (a lookup, no matmul). GPT-2 124M: 855.4M per token."""
    attn = gpt.blocks[0].attn
    lookups = sum(p.numel() for p in gpt.position.parameters())
    n_params = gpt.num_params(padding=True) - lookups
    return 6 * n_params + 12 * gpt.n_layer * attn.n_head * attn.head_size * gpt.block_size


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_FLOPS.items() if key in name), None)


class TokenThroughput(L.Callback):
    """Logs ``train/tokens`` (seen so far, all ranks), ``train/tokens_per_sec`` and, on a GPU
    whose bf16 peak is known, ``train/mfu``.

    Args:
        every_n_steps: Log once per this many optimizer steps, averaged over them.
    """

    def __init__(self, every_n_steps: int = 10):
        self.every_n_steps = every_n_steps
        self.tokens = 0  # saved in checkpoints: the count goes on across a resume
        self._window_tokens = 0
        self._window_start: float | None = None
        self._last_step = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._window_start is None:
            self._window_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step_tokens = (batch.size(1) - 1) * batch.size(0) * trainer.world_size
        self.tokens += step_tokens
        self._window_tokens += step_tokens
        step = trainer.global_step  # optimizer steps: with accumulation, batches share one
        if step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        seconds = time.perf_counter() - self._window_start
        rate = self._window_tokens / max(seconds, 1e-9)
        metrics = {"train/tokens": float(self.tokens), "train/tokens_per_sec": rate}
        peak = device_peak_flops(pl_module.device)
        if peak:
            metrics["train/mfu"] = (
                rate * flops_per_token(pl_module.gpt) / (peak * trainer.world_size)
            )
        pl_module.log_dict(metrics, on_step=True, rank_zero_only=True)
        self._window_tokens, self._window_start = 0, None

    def state_dict(self) -> dict:
        return {"tokens": self.tokens}

    def load_state_dict(self, state: dict) -> None:
        self.tokens = state["tokens"]


class TextSamples(L.Callback):
    """Every ``every_n_steps`` optimizer steps, sample text and log it to TensorBoard's TEXT tab.

    Sampling runs eagerly even when the model is compiled (it leaves the compiled training
    graph alone), under the run's precision (bf16-mixed: bf16 autocast).

    Args:
        every_n_steps: Steps between samples (0: never).
        prompt: Text to continue; empty starts a new document.
        max_new_tokens: Length of each sample, at most.
        temperature: Sampling temperature (0: greedy).
        top_k: Sample among the k most likely tokens.
        seed: Seed of the sampler, so samples at different steps are comparable.
    """

    def __init__(
        self,
        every_n_steps: int = 200,
        prompt: str = "",
        max_new_tokens: int = 96,
        temperature: float = 0.8,
        top_k: int | None = 50,
        seed: int = 1234,
    ):
        self.every_n_steps, self.prompt, self.max_new_tokens = every_n_steps, prompt, max_new_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self._last_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        if trainer.is_global_zero:
            self.log_sample(trainer, pl_module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.every_n_steps and trainer.is_global_zero and trainer.global_step != self._last_step:
            self.log_sample(trainer, pl_module, trainer.global_step)

    def sample(self, trainer, pl_module) -> str:
        from lit_gpt_scratch.model.generate import generate_text
        from lit_gpt_scratch.tokenizer import load_tokenizer

        spec = getattr(getattr(trainer, "datamodule", None), "hparams", {}).get("tokenizer", "gpt2")
        # Eagerly, whatever model.compile says: each decoding shape (the prompt, then one
        # token at a time against a growing KV cache) would compile a graph of its own until
        # Dynamo's recompile limit, after which it stops compiling GPT.forward for training
        # too (or, with dynamic shapes, it makes the training graph's shapes dynamic). Under
        # the run's autocast, which callbacks run outside of: the dtype training computes in.
        with torch.compiler.set_stance("force_eager"), trainer.precision_plugin.forward_context():
            [text] = generate_text(
                pl_module.gpt,
                load_tokenizer(spec),
                self.prompt,
                self.max_new_tokens,
                temperature=self.temperature,
                top_k=self.top_k,
                seed=self.seed,
            )
        return self.prompt + text

    def log_sample(self, trainer, pl_module, step: int) -> None:
        text = self.sample(trainer, pl_module)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            # Markdown: a code block keeps indentation and newlines as they are
            experiment.add_text("samples", f"```\n{text}\n```", global_step=step)


class ProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, showing ``train/loss`` as read on the steps where Lightning reads
    the logged metrics for the logger anyway (every ``log_every_n_steps``).

    A metric logged with ``prog_bar=True`` is read (``.item()``) after every step, and on a GPU
    each read makes the host wait for the device. So the loss is logged without it, and this
    bar reads it at the logging steps only. The step count still moves every step.
    """

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            metrics["train/loss"] = f"{loss.item():.3f}"
        return metrics

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        bar, n = self.train_progress_bar, batch_idx + 1
        if bar is None or bar.disable or (n % self.refresh_rate and n != bar.total):
            return
        bar.n = n
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0 or n == bar.total:
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # also refreshes
        else:
            bar.refresh()
