"""LitDPO: preference fine-tuning by direct preference optimisation (``model.objective: dpo``).

For a prompt x with a chosen reply y_w and a rejected one y_l, the loss is

    -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

where pi is the model being trained (the policy), ref a frozen copy of it as the fine-tune
started, and each log-probability is summed over the reply's tokens (and its ``<|end|>``)
only: the prompt is masked. ``beta * (log pi(y|x) - log ref(y|x))`` is the reply's implicit
reward; training widens the chosen reply's reward over the rejected one's (the margin), and
``beta`` says how far the policy may stray from the reference to do so.

The reference: a deep copy of the GPT taken when the fit is set up (after ``fit --ckpt_path``
loaded the start checkpoint's weights), frozen (no gradient, never in the optimizer) and kept
in eval mode. It is saved in the checkpoints beside the policy (``reference.*`` keys, which
``generate``, ``chat`` and ``export`` ignore), so a resume scores against the same reference
bit for bit. With ``model.lora`` there is no copy: the reference is the policy with its
adapters switched off, i.e. the frozen base weights.

Batches are ``PreferenceDataModule``'s (B, 2, 2, T + 1). Everything else (optimizer,
schedule, clipping, the divergence guard, exact resume) is LitGPT's.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import FSDPStrategy
from torchmetrics import MeanMetric

from lit_gpt_scratch.errors import UserError, check_above
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.model.lora import LoRA, adapters_disabled
from lit_gpt_scratch.train.module import LitGPT, inputs_and_targets
from lit_gpt_scratch.train.optimizers import AdamW
from lit_gpt_scratch.train.schedules import WarmupCosineLR

# what validation logs, as val/<name>
DPO_METRICS = ("loss", "margin", "accuracy", "reward_chosen", "reward_rejected")


def reply_logprobs(gpt: GPT, batch: torch.Tensor) -> torch.Tensor:
    """(B, 2) fp32 log-probability of the chosen and the rejected reply of each pair of a
    (B, 2, 2, T + 1) batch, summed over the reply's target tokens."""
    B = batch.size(0)
    x, y = inputs_and_targets(batch.flatten(0, 1))  # (2B, T) each, y -100 off the reply
    logits, _ = gpt(x)  # (2B, T, V)
    logp = F.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (2B, T)
    return (picked * (y != -100)).sum(dim=-1).view(B, 2)


def dpo_loss(
    policy: torch.Tensor, reference: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mean DPO loss over pairs, and per-pair (B,) rewards, margins and wins, from (B, 2)
    chosen/rejected log-probabilities under the policy and the reference."""
    rewards = beta * (policy - reference.detach())  # (B, 2)
    margin = rewards[:, 0] - rewards[:, 1]  # (B,)
    loss = -F.logsigmoid(margin).mean()
    stats = {
        "margin": margin.detach(),
        "accuracy": (margin > 0).float().detach(),
        "reward_chosen": rewards[:, 0].detach(),
        "reward_rejected": rewards[:, 1].detach(),
    }
    return loss, stats


class LitDPO(LitGPT):
    """Fine-tunes a chat model on preference pairs with the DPO loss.

    Args:
        gpt: The model, as its chat fine-tune (SFT) configured it; ``fit --ckpt_path`` with
            that run's checkpoint starts from its weights, which also become the reference.
        objective: ``dpo``: the direct preference optimisation loss.
        beta: Scale of the implicit reward ``beta * (log pi - log ref)``: larger keeps the
            policy closer to the reference (typical: 0.1 to 0.5).
        optimizer, lr_scheduler, compile, compile_mode, compile_dynamic, compile_fullgraph,
            compile_backend, nonfinite, max_consecutive_skips: As LitGPT's.
        lora: As LitGPT's; the reference is then the base model (the adapters switched off),
            and no copy is kept.
    """

    def __init__(
        self,
        gpt: GPT,
        objective: Literal["dpo"] = "dpo",
        beta: float = 0.1,
        optimizer: OptimizerCallable = AdamW,
        lr_scheduler: LRSchedulerCallable = WarmupCosineLR,
        compile: bool | None = None,
        compile_mode: str | None = None,
        compile_dynamic: bool | None = False,
        compile_fullgraph: bool = False,
        compile_backend: str = "inductor",
        nonfinite: Literal["skip", "stop"] = "skip",
        max_consecutive_skips: int = 20,
        lora: LoRA | None = None,
    ):
        check_above("model.beta", beta, 0)
        super().__init__(
            gpt, optimizer, lr_scheduler, compile, compile_mode, compile_dynamic,
            compile_fullgraph, compile_backend, nonfinite, max_consecutive_skips, lora,
        )  # fmt: skip
        self.beta = beta
        # made when the fit is set up (the start weights are loaded by then); None with LoRA
        self.reference: GPT | None = None
        self._reference_taken = False
        self.EVALUATION_METRICS = DPO_METRICS
        for split in ("val", "test"):
            for name in DPO_METRICS:
                setattr(self, f"{split}_{name}", MeanMetric())

    def take_reference(self) -> None:
        """Freeze a copy of the GPT as it is now as the reference (with LoRA: nothing to copy).
        A checkpoint loaded afterwards puts its own reference over this one."""
        self._reference_taken = True
        if self.lora is not None:
            return
        self.reference = copy.deepcopy(self.gpt).requires_grad_(False).eval()

    def setup(self, stage: str) -> None:
        if self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy):
            raise UserError("model.objective dpo trains on one device or with DDP, not FSDP")
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        vocab = getattr(datamodule, "vocab_size", None)
        if vocab is not None and vocab > self.gpt.vocab_size:
            raise UserError(
                f"data.tokenizer has {vocab} ids, more than model.gpt.vocab_size "
                f"{self.gpt.vocab_size}: use the chat model's tokenizer"
            )
        if not self._reference_taken:
            self.take_reference()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # no dropout in the reference, whatever Lightning sets
        return self

    def reference_logprobs(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 2) the reference's reply log-probabilities, without a graph."""
        with torch.no_grad():
            if self.reference is not None:
                return reply_logprobs(self.reference, batch)
            with adapters_disabled(self.gpt):
                return reply_logprobs(self.gpt, batch)

    def _loss_and_stats(self, batch: torch.Tensor):
        reference = self.reference_logprobs(batch)
        return dpo_loss(reply_logprobs(self.gpt, batch), reference, self.beta)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        datamodule = self.trainer.datamodule
        if hasattr(datamodule, "mark_batch_consumed"):  # the position checkpoints save
            datamodule.mark_batch_consumed()
        loss, stats = self._loss_and_stats(batch)
        self.log("train/loss", loss, on_step=True)
        self.log_dict({f"train/{k}": v.mean() for k, v in stats.items()}, on_step=True)
        return loss

    def _evaluate(self, batch: torch.Tensor, split: str) -> None:
        loss, stats = self._loss_and_stats(batch)
        n = batch.size(0)
        getattr(self, f"{split}_loss").update(loss, weight=n)  # the mean over every pair
        for name, values in stats.items():
            getattr(self, f"{split}_{name}").update(values)

    def _log_evaluation(self, split: str, prog_bar: bool) -> None:
        metrics = {name: getattr(self, f"{split}_{name}") for name in DPO_METRICS}
        logged = {f"{split}/{name}": metric.compute() for name, metric in metrics.items()}
        self.log_dict(logged, prog_bar=prog_bar, sync_dist=False)  # torchmetrics sums ranks
        for metric in metrics.values():
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val", prog_bar=True)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test", prog_bar=False)

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """(B,) each pair's reward margin (chosen minus rejected)."""
        return self._loss_and_stats(batch)[1]["margin"]
