"""LitClassifier: a GPT fine-tuned as a text classifier (``model.head: classification``).

A ``Linear(d_model, n_classes)`` head reads the final hidden state (after ``ln_f``) of each
text's last token: under causal attention that is the one position that has seen the whole
text, and the padding after it never reaches it. The LM head is not used (nor trained).

``trainable_blocks: N`` freezes the embeddings, the positions and every block but the last
``N``; those blocks, the final norm and the head train. None trains everything.

Batches are ``ClassificationDataModule``'s ``(ids (B, T), lengths (B,), labels (B,))``. The
loss is the cross-entropy of the class logits; validation logs ``val/loss`` and
``val/accuracy`` over the whole val file. Everything else (optimizer, schedule, clipping, the
divergence guard, exact resume) is LitGPT's.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.train.module import LitGPT
from lit_gpt_scratch.train.optimizers import AdamW
from lit_gpt_scratch.train.param_groups import param_groups
from lit_gpt_scratch.train.schedules import WarmupCosineLR

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # ids (B, T), lengths (B,), labels (B,)


class LitClassifier(LitGPT):
    """Fine-tunes a GPT to sort texts into ``n_classes`` classes.

    Args:
        gpt: The base model, as pretraining configured it; ``fit --ckpt_path`` with a
            pretraining checkpoint (or a weights-only one) starts from its weights.
        head: ``classification``: a linear head on the last token's final hidden state.
        n_classes: Classes the head scores (also ``data.n_classes``, linked).
        trainable_blocks: Train only the last this many blocks (and the final norm and the
            head); the embeddings and the earlier blocks stay frozen. None: train all.
        optimizer, lr_scheduler, compile, compile_mode, compile_dynamic, compile_fullgraph,
            compile_backend, nonfinite, max_consecutive_skips: As LitGPT's. Only the
            parameters that train are given to the optimizer.
    """

    EVALUATION_METRICS = ("loss", "accuracy")

    def __init__(
        self,
        gpt: GPT,
        head: Literal["classification"] = "classification",
        n_classes: int = 2,
        trainable_blocks: int | None = None,
        optimizer: OptimizerCallable = AdamW,
        lr_scheduler: LRSchedulerCallable = WarmupCosineLR,
        compile: bool | None = None,
        compile_mode: str | None = None,
        compile_dynamic: bool | None = False,
        compile_fullgraph: bool = False,
        compile_backend: str = "inductor",
        nonfinite: Literal["skip", "stop"] = "skip",
        max_consecutive_skips: int = 20,
    ):
        if n_classes < 2:
            raise UserError(f"model.n_classes must be at least 2, got {n_classes}")
        if trainable_blocks is not None and not 0 <= trainable_blocks <= gpt.n_layer:
            raise UserError(
                f"model.trainable_blocks must be in [0, {gpt.n_layer}] (the model's n_layer), "
                f"got {trainable_blocks}"
            )
        super().__init__(
            gpt, optimizer, lr_scheduler, compile, compile_mode, compile_dynamic,
            compile_fullgraph, compile_backend, nonfinite, max_consecutive_skips,
        )  # fmt: skip
        d_model = gpt.wte.embedding_dim
        self.head = nn.Linear(d_model, n_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        freeze_all_but_last_blocks(gpt, trainable_blocks)
        self.val_accuracy = MulticlassAccuracy(n_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(n_classes, average="micro")

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, n_classes) fp32 class logits of (B, T) right-padded ids of (B,) lengths."""
        x = self.gpt.features(ids)  # (B, T, C)
        last = x[torch.arange(ids.size(0), device=ids.device), lengths - 1]  # (B, C)
        return self.head(last).float()

    def setup(self, stage: str) -> None:
        if self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy):
            raise UserError("model.head classification trains on one device or with DDP, not FSDP")
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        vocab = getattr(datamodule, "vocab_size", None)
        if vocab is not None and vocab > self.gpt.vocab_size:
            raise UserError(
                f"data.tokenizer has {vocab} ids, more than model.gpt.vocab_size "
                f"{self.gpt.vocab_size}: use the base model's tokenizer"
            )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        datamodule = self.trainer.datamodule
        if hasattr(datamodule, "mark_batch_consumed"):  # the position checkpoints save
            datamodule.mark_batch_consumed()
        ids, lengths, labels = batch
        loss = F.cross_entropy(self(ids, lengths), labels)
        self.log("train/loss", loss, on_step=True)
        return loss

    def _evaluate(self, batch: Batch, split: str) -> None:
        ids, lengths, labels = batch
        logits = self(ids, lengths)  # (B, n_classes)
        loss = F.cross_entropy(logits, labels)
        getattr(self, f"{split}_loss").update(loss, weight=labels.numel())
        getattr(self, f"{split}_accuracy").update(logits, labels)

    def _log_evaluation(self, split: str, prog_bar: bool) -> None:
        loss, accuracy = getattr(self, f"{split}_loss"), getattr(self, f"{split}_accuracy")
        logged = {f"{split}/loss": loss.compute(), f"{split}/accuracy": accuracy.compute()}
        self.log_dict(logged, prog_bar=prog_bar, sync_dist=False)  # torchmetrics sums ranks
        loss.reset()
        accuracy.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val", prog_bar=True)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test", prog_bar=False)

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """(B,) the predicted class of each text."""
        ids, lengths, _ = batch
        return self(ids, lengths).argmax(dim=-1)

    def optimizer_groups(self) -> list[dict]:
        """LitGPT's groups, the frozen parameters left out; the head's weight joins the
        embeddings and output layer (decayed), its bias the vectors (not decayed)."""
        groups = param_groups(self.gpt, self.param_roles)
        extra = {"embedding": [self.head.weight], "vector": [self.head.bias]}
        for group in groups:
            trained = [p for p in group["params"] if p.requires_grad]
            group["params"] = trained + extra.get(group["role"], [])
        return [group for group in groups if group["params"]]


def freeze_all_but_last_blocks(gpt: GPT, trainable: int | None) -> None:
    """Freeze the embeddings, the positions and all blocks but the last ``trainable`` (None:
    freeze nothing). The LM head is always frozen: a classifier never uses it (a tied one is
    the token embedding, which follows the embeddings)."""
    if gpt.lm_head.weight is not gpt.wte.weight:
        gpt.lm_head.requires_grad_(False)
    if trainable is None:
        return
    gpt.wte.requires_grad_(False)
    gpt.position.requires_grad_(False)
    for block in gpt.blocks[: gpt.n_layer - trainable]:
        block.requires_grad_(False)
