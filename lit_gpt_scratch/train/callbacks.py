"""Training callbacks: throughput/MFU and generated text samples in TensorBoard.

Both appear at the top level of a training config (``throughput:``, ``samples:``).
"""

from __future__ import annotations

import logging
import time

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_only

from lit_gpt_scratch.errors import check_above, check_at_least

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s (no sparsity), by the exact name torch.cuda.get_device_name gives.
# An H100 PCIe or NVL is not an H100 SXM: names are matched whole, never by substring, and a GPU
# that is not listed gets no MFU (or give its peak: throughput.peak_flops).
BF16_PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989.4e12,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.0e12,
    "NVIDIA H100 NVL": 835.5e12,
    "NVIDIA H200": 989.4e12,  # H200 SXM
    "NVIDIA H200 NVL": 835.5e12,
    "NVIDIA GH200 480GB": 989.4e12,
    "NVIDIA B200": 2250e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
    "NVIDIA L40S": 362.05e12,
    "NVIDIA L4": 121e12,
}


def flops_per_token(gpt) -> float:
    """Training FLOPs per token, as nanoGPT and PaLM count them: 6N for the weights (forward
    and backward) + 12·L·H·Q·T for attention. N counts the weights a matmul touches: the head's
    rows, padding included, but no lookup table (the token embedding when the head is not tied
    to it, a learned position table). GPT-2 124M: 855.4M per token; 124m-modern: 854.8M."""
    attn = gpt.blocks[0].attn
    lookups = sum(p.numel() for p in gpt.position.parameters())
    if gpt.lm_head.weight is not gpt.wte.weight:  # untied: the embedding is a lookup only
        lookups += gpt.wte.weight.numel()
    n_params = gpt.num_params(padding=True) - lookups
    return 6 * n_params + 12 * gpt.n_layer * attn.n_head * attn.head_size * gpt.block_size


def device_peak_flops(device: torch.device) -> float | None:
    """The dense bf16 peak of ``device`` if its exact name is in ``BF16_PEAK_FLOPS``; None on
    a CPU or an unlisted GPU (no MFU is better than one against a guessed peak)."""
    if device.type != "cuda":
        return None
    return BF16_PEAK_FLOPS.get(torch.cuda.get_device_name(device))


class TokenThroughput(L.Callback):
    """Logs ``train/tokens`` (seen so far, all ranks), ``train/tokens_per_sec`` and, on a GPU
    whose bf16 peak is known, ``train/mfu``.

    Args:
        every_n_steps: Log once per this many optimizer steps, averaged over them.
        peak_flops: The dense bf16 peak FLOP/s of one device, for a GPU that
            ``BF16_PEAK_FLOPS`` does not list (or to use a measured peak); None: the table's.
    """

    def __init__(self, every_n_steps: int = 10, peak_flops: float | None = None):
        check_at_least("throughput.every_n_steps", every_n_steps, 1)
        if peak_flops is not None:
            check_above("throughput.peak_flops", peak_flops, 0)
        self.every_n_steps = every_n_steps
        self.peak_flops = peak_flops
        self.tokens = 0  # saved in checkpoints: the count goes on across a resume
        self._window_tokens = 0
        self._window_start: float | None = None
        self._last_step = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._window_start is None:
            self._window_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # (B, T + 1) windows, or chat's (B, 2, T + 1): ids and mask, train on T tokens a row;
        # a classifier's batch is a tuple whose first entry is its (B, T) ids
        if isinstance(batch, (tuple, list)):
            step_tokens = batch[0].numel() * trainer.world_size
        else:
            step_tokens = (batch.size(-1) - 1) * batch.size(0) * trainer.world_size
        self.tokens += step_tokens
        self._window_tokens += step_tokens
        step = trainer.global_step  # optimizer steps: with accumulation, batches share one
        if step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        seconds = time.perf_counter() - self._window_start
        rate = self._window_tokens / max(seconds, 1e-9)
        metrics = {"train/tokens": float(self.tokens), "train/tokens_per_sec": rate}
        peak = self.peak_flops or device_peak_flops(pl_module.device)
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
        check_at_least("samples.every_n_steps", every_n_steps, 0)
        check_at_least("samples.max_new_tokens", max_new_tokens, 1)
        check_at_least("samples.temperature", temperature, 0)
        if top_k is not None:
            check_at_least("samples.top_k", top_k, 1)
        self.every_n_steps, self.prompt, self.max_new_tokens = every_n_steps, prompt, max_new_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self._last_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        self.log_sample(trainer, pl_module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.every_n_steps and trainer.global_step != self._last_step:
            self.log_sample(trainer, pl_module, trainer.global_step)

    def sample(self, trainer, pl_module) -> str:
        """A sample of the model as it is now. Under FSDP no rank holds the whole model, so
        every rank must call this together: each generation step goes through the sharded
        root module, whose forward gathers the weights on every rank, and all ranks run
        every step (no early stop) so that they make the same calls. Elsewhere one rank
        generates alone with the GPT itself."""
        from lit_gpt_scratch.model.generate import generate_text
        from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

        spec = getattr(getattr(trainer, "datamodule", None), "hparams", {}).get("tokenizer", "gpt2")
        sharded = _is_sharded(trainer)
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
                forward=trainer.strategy.model if sharded else None,
                early_stop=not sharded,
            )
        return self.prompt + text

    def log_sample(self, trainer, pl_module, step: int) -> None:
        if not (trainer.is_global_zero or _is_sharded(trainer)):
            return
        from lit_gpt_scratch.model.generate import NonFiniteLogits

        try:
            text = self.sample(trainer, pl_module)
        except NonFiniteLogits as e:  # a sample is never worth the run: say so, train on
            rank_zero_only(log.warning)(f"samples: none at step {step}: {e}")
            return
        if not trainer.is_global_zero:
            return
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            # Markdown: a code block keeps indentation and newlines as they are
            experiment.add_text("samples", f"```\n{text}\n```", global_step=step)


def _is_sharded(trainer) -> bool:
    return isinstance(trainer.strategy, FSDPStrategy)
