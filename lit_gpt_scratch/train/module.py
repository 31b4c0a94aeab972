"""LitGPT: the LightningModule around the GPT (loss, optimizer groups, schedule, metrics).

It knows nothing of files: batches arrive as (B, block_size + 1) windows of token ids (or
(B, 2, block_size + 1): ids and a loss mask, for chat fine-tuning), and
what else it asks of the data module is the ``TokenData`` interface below.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal, Protocol, runtime_checkable

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics import MeanMetric, SumMetric

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.model.lora import LoRA, add_adapters
from lit_gpt_scratch.train.distributed import all_reduce, world_size
from lit_gpt_scratch.train.divergence import DivergenceGuard
from lit_gpt_scratch.train.lora_checkpoints import BASE_KEY, keep_adapters_only, lora_settings
from lit_gpt_scratch.train.optimizers import AdamW, skips_on_device
from lit_gpt_scratch.train.param_groups import (
    first_nonfinite_parameter,
    param_groups,
    parameter_roles,
)
from lit_gpt_scratch.train.rng import all_ranks_rng_states, restore_rank_rng_states
from lit_gpt_scratch.train.schedules import WarmupCosineLR, apply_configured, configured_settings


@runtime_checkable
class TokenData(Protocol):
    """What LitGPT asks of a data module that offers it (``data.TokenDataModule`` does; any
    other LightningDataModule trains too, without exact resume and without ``val/bpb``)."""

    def mark_batch_consumed(self) -> None:
        """Count one training batch as trained on: the data position checkpoints save counts
        these, not the batches the loader prefetched."""

    def token_bytes(self) -> torch.Tensor:
        """(vocab_size,) the bytes of text each token id stands for, for bits per byte."""


@runtime_checkable
class NamedValSets(Protocol):
    """What LitGPT asks of a data module with named validation sets (``TokenDataModule``'s
    ``data.val_sets``), scored whole at every validation as ``val/<name>/loss`` and ``/bpb``."""

    def val_set_batches(self) -> Mapping[str, Iterable[tuple[torch.Tensor, ...]]]:
        """This rank's batches of each set, by name: inputs (B, T), targets (B, T) (-100 where
        not scored), bytes (B,) (summing to the text's bytes over all ranks). Together the
        ranks score every window once, each rank in the same number of batches."""


class ValSetSums(torch.nn.Module):
    """One named set's exact sums over its windows and all ranks: nats, scored tokens, bytes.
    float64, so that token and byte counts stay exact integers past 2**24."""

    def __init__(self):
        super().__init__()
        self.nats, self.tokens, self.bytes = (SumMetric().set_dtype(torch.float64) for _ in "ntb")

    def compute_and_reset(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sums = tuple(metric.compute() for metric in (self.nats, self.tokens, self.bytes))
        for metric in (self.nats, self.tokens, self.bytes):
            metric.reset()
        return sums


class LitGPT(L.LightningModule):
    """Trains a GPT on next-token prediction.

    Args:
        gpt: The model, injected from YAML (``model.gpt.class_path`` + ``init_args``).
        optimizer: Called with three param groups (``param_groups``): the blocks' matrices and
            the embeddings and head, decayed with the optimizer's ``weight_decay``, and the
            vectors (biases, norm gains: ``weight_decay`` 0). Each carries a ``role`` key.
            With ``lora``, one group: the adapters.
        lr_scheduler: Called with the optimizer; stepped after every optimizer step. A
            scheduler with ``set_total_steps`` gets the run's total optimizer steps.
        compile: ``torch.compile`` the GPT in place (state-dict keys unchanged). None: on CUDA.
            Only training and validation run compiled; text samples run eagerly.
        compile_mode: ``torch.compile``'s ``mode``, for the inductor backend: ``default``,
            ``reduce-overhead`` (CUDA graphs), ``max-autotune``, ...; None: ``default``.
        compile_dynamic: ``torch.compile``'s ``dynamic``. False (the default): static shapes.
            Training shapes are fixed, so a ragged batch (another shape) compiles one more
            graph for that shape instead of turning every dimension dynamic for the rest of
            the run. None: torch's automatic dynamic shapes; True: dynamic from the start.
        compile_fullgraph: Fail on any graph break instead of running that part eagerly.
        compile_backend: ``torch.compile``'s backend: ``inductor``, or e.g. ``aot_eager``
            (no code generation: checks what Dynamo captures, quickly).
        nonfinite: What a non-finite gradient norm (a NaN or inf loss gives one too) does:
            ``skip`` leaves the weights and optimizer state untouched for that step (the batch
            counts as used); ``stop`` skips it too and ends the run with exit code 3, saving
            no checkpoint after the step. Every rank takes the same decision. With a fused
            optimizer (the default AdamW) the skip happens on the device and the flags are read
            every ``log_every_n_steps`` and before each save, so a stop comes at most that
            many steps later; other optimizers read the flag every step (a host sync).
        max_consecutive_skips: Stop, as ``stop`` would, after this many non-finite steps in a
            row: the run has diverged, not hit one bad batch.
        lora: Low-rank adapters on the blocks' linear layers (``model/lora.py``): every GPT
            weight is frozen and the optimizer gets one group, the adapters (``role``
            ``adapter``: AdamW steps under Muon too). None: every weight trains.
    """

    def __init__(
        self,
        gpt: GPT,
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
        super().__init__()
        # Plain save_hyperparameters(): under LightningCLI it records the YAML specs, so
        # load_from_checkpoint rebuilds the injected GPT (ignoring "gpt" would break that).
        self.save_hyperparameters()
        self.gpt = gpt
        self.lora = lora
        if lora is not None:
            add_adapters(gpt, lora)  # before the roles: the adapters are parameters too
        # Where the frozen base weights come from ({path, fingerprint}); set by the CLI when a
        # LoRA fine-tune starts or resumes, recorded in every checkpoint (train/lora_checkpoints.py)
        self.lora_base: dict | None = None
        # Recorded now, on the whole model: FSDP builds the optimizer after it has flattened
        # every parameter into 1-D shards, when shapes no longer tell a matrix from a bias.
        self.param_roles = parameter_roles(gpt)
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.compile_model = compile
        self.compile_options = _compile_options(
            compile_mode, compile_dynamic, compile_fullgraph, compile_backend
        )
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        # Bits per byte: nats summed over target tokens / (ln 2 x the bytes those tokens
        # stand for). Comparable across tokenizers, unlike the loss per token.
        self.val_nats, self.val_bytes = SumMetric(), SumMetric()
        self.test_nats, self.test_bytes = SumMetric(), SumMetric()
        self.register_buffer("token_bytes", None, persistent=False)  # (vocab,), from TokenData
        # Named val sets' sums, made in setup (metric states are not saved: a checkpoint loads
        # with val sets added or removed).
        self.val_set_sums = torch.nn.ModuleDict()
        self._val_sets: NamedValSets | None = None
        self._token_data: TokenData | None = None  # the data module, when it offers TokenData
        self._rng_states_to_restore: list[dict] | None = None
        self._resumed = False
        self._saved_recipe: dict = {}
        self._configured: dict | None = None  # configured_settings, put back over a resume's
        self.divergence = DivergenceGuard(nonfinite, max_consecutive_skips)
        self._grad_norm: torch.Tensor | None = None  # this step's, before clipping

    def configure_model(self) -> None:
        # Ask the strategy: the module may not be on its device yet.
        on_cuda = self._trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        if on_cuda:  # TF32 tensor cores for fp32 matmuls (bf16-mixed runs keep fp32 parts)
            torch.set_float32_matmul_precision("high")
        use = on_cuda if self.compile_model is None else self.compile_model
        if use and not getattr(self, "_compiled", False):
            self.gpt.compile(**self.compile_options)  # in place: no "_orig_mod." keys
            self._compiled = True

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, **options):
        """The GPT's forward (``options``: its ``pos``, ``caches``, ``pad_mask``). Under FSDP,
        calling the wrapped module runs this with the root's weights gathered."""
        return self.gpt(idx, targets, **options)

    def _loss(self, batch: torch.Tensor) -> torch.Tensor:
        x, y = inputs_and_targets(batch)  # (B, T) inputs and the ids that follow each
        _, loss = self.gpt(x, y)  # fp32 cross-entropy, the mean over targets not -100
        return loss

    def setup(self, stage: str) -> None:
        # Lightning sets the data module up first: its token byte counts are known now.
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        self._token_data = datamodule if isinstance(datamodule, TokenData) else None
        if self._token_data is not None:
            token_bytes = self._token_data.token_bytes()
            self.token_bytes = token_bytes.to(dtype=torch.long, device=self.device)
        self._val_sets = datamodule if isinstance(datamodule, NamedValSets) else None
        names = list(self._val_sets.val_set_batches()) if self._val_sets is not None else []
        self.val_set_sums = torch.nn.ModuleDict({name: ValSetSums() for name in names})
        # checkpoint.monitor may name a set's metric (val/<name>/bpb): checked at fit start
        named = tuple(f"{name}/{metric}" for name in names for metric in ("loss", "bpb"))
        self.EVALUATION_METRICS = (*LitGPT.EVALUATION_METRICS, *named)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        # The data position saved in checkpoints counts batches trained on, not batches the
        # loader prefetched. Mark it here: a checkpoint saved at this step's end (callbacks
        # run before the module's on_train_batch_end) must already count this batch.
        if self._token_data is not None:
            self._token_data.mark_batch_consumed()
        loss = self._loss(batch)
        # Not prog_bar=True: Lightning would read it (a host sync) after every step.
        # console.ProgressBar shows it at the logging steps instead.
        self.log("train/loss", loss, on_step=True)
        return loss

    def _evaluate(self, batch: torch.Tensor, split: str) -> None:
        loss = self._loss(batch)  # mean over the batch's targets (a chat batch's: masked)
        targets = inputs_and_targets(batch)[1]
        counted = targets != -100  # (B, T)
        # weighted by targets, so val/loss is the mean over every counted target of the split
        getattr(self, f"{split}_loss").update(loss, weight=counted.sum())
        if self.token_bytes is not None:
            getattr(self, f"{split}_nats").update(loss.detach() * counted.sum())
            n_bytes = (self.token_bytes[targets.clamp(min=0)] * counted).sum()
            getattr(self, f"{split}_bytes").update(n_bytes)

    # what validation logs, as val/<name> (bpb with the tokenizer's byte counts only); setup
    # adds each named val set's <set>/loss and <set>/bpb
    EVALUATION_METRICS = ("loss", "ppl", "bpb")

    def _log_evaluation(self, split: str, prog_bar: bool) -> None:
        metrics = [getattr(self, f"{split}_{m}") for m in ("loss", "nats", "bytes")]
        loss = metrics[0].compute()  # torchmetrics sums over ranks
        logged = {f"{split}/loss": loss, f"{split}/ppl": loss.exp()}
        if self.token_bytes is not None:
            nats, n_bytes = metrics[1].compute(), metrics[2].compute()
            logged[f"{split}/bpb"] = nats / (math.log(2) * n_bytes.clamp(min=1))
        self.log_dict(logged, prog_bar=prog_bar, sync_dist=False)
        for metric in metrics:
            metric.reset()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val", prog_bar=True)
        if not self.trainer.sanity_checking:  # sanity metrics are not logged: spare the cost
            self._score_val_sets("val")

    # --- named val sets (data.val_sets) -----------------------------------------------------

    def _score_val_sets(self, split: str) -> None:
        """Score each named set whole and log ``<split>/<name>/loss`` and ``/bpb``. Here, not
        as extra val dataloaders: Lightning would cut them at ``trainer.limit_val_batches``
        (runs with two tokenizers would then score different spans of text) and suffix
        every logged name with ``/dataloader_idx_N``."""
        if not len(self.val_set_sums):
            return
        # Under FSDP only the root module's forward gathers the weights, on every rank.
        sharded = isinstance(self.trainer.strategy, FSDPStrategy)
        forward = self.trainer.strategy.model if sharded else self.gpt
        with torch.no_grad(), self.trainer.precision_plugin.forward_context():
            for name, batches in self._val_sets.val_set_batches().items():
                sums = self.val_set_sums[name]
                for inputs, targets, n_bytes in batches:
                    self._score_val_batch(forward, sums, inputs, targets, n_bytes)
        logged = {}
        for name, sums in self.val_set_sums.items():
            nats, tokens, n_bytes = sums.compute_and_reset()  # summed over ranks
            logged[f"{split}/{name}/loss"] = nats / tokens.clamp(min=1)
            logged[f"{split}/{name}/bpb"] = nats / (math.log(2) * n_bytes.clamp(min=1))
        # add_dataloader_idx=False: the names stay exactly these, whatever the loaders
        self.log_dict(logged, sync_dist=False, add_dataloader_idx=False)

    def _score_val_batch(self, forward, sums: ValSetSums, inputs, targets, n_bytes) -> None:
        inputs, targets = inputs.to(self.device), targets.to(self.device)  # (B, T)
        _, loss = forward(inputs, targets)  # fp32 mean over the scored targets (-100 ignored)
        scored = (targets != -100).sum()
        # A batch of padding windows scores nothing (its mean is NaN): it adds 0.
        nats = torch.where(scored > 0, loss.double() * scored, 0.0)
        sums.nats.update(nats)
        sums.tokens.update(scored)
        sums.bytes.update(n_bytes.sum())

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test", prog_bar=False)
        self._score_val_sets("test")

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Mean next-token loss of each window, (B,)."""
        x, y = batch[:, :-1], batch[:, 1:]
        logits, _ = self.gpt(x)
        losses = torch.nn.functional.cross_entropy(
            logits.float().transpose(1, 2), y, reduction="none"
        )  # (B, T)
        return losses.mean(dim=1)

    # --- exact resume: random number generators, the divergence guard's counts ---------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.divergence.check()  # a stopped run saves nothing past its bad step
        # Diverged weights never replace a good checkpoint.
        bad = first_nonfinite_parameter(self.gpt)
        if bad is not None:
            raise UserError(
                f"not saving the checkpoint of step {self.trainer.global_step}: parameter "
                f"{bad} is not finite (the last checkpoint saved before is kept)"
            )
        checkpoint["rng_states"] = all_ranks_rng_states()  # every rank calls this hook
        checkpoint["skipped_steps"] = self.divergence.state_dict()
        checkpoint["trainer_recipe"] = trainer_recipe(self.trainer)
        if self.lora is not None:
            self._save_lora(checkpoint)

    def _save_lora(self, checkpoint: dict) -> None:
        """The LoRA settings as plain data, the base checkpoint's record, and with ``save:
        adapters`` the adapters alone (train/lora_checkpoints.py)."""
        checkpoint.setdefault("hyper_parameters", {})["lora"] = lora_settings(self.lora)
        checkpoint[BASE_KEY] = self.lora_base
        strategy = self.trainer.strategy
        sharded = isinstance(strategy, FSDPStrategy) and strategy._state_dict_type == "sharded"
        if self.lora.save == "adapters" and self.lora_base is not None and not sharded:
            keep_adapters_only(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.divergence.load_state_dict(checkpoint.get("skipped_steps", [0, 0]))
        # Restored at the first resumed batch, not now: between loading and that batch
        # Lightning draws from the generators (a DataLoader iterator takes its base seed).
        self._rng_states_to_restore = checkpoint.get("rng_states")
        self._saved_recipe = checkpoint.get("trainer_recipe", {})
        self._resumed = True
        self.lora_base = checkpoint.get(BASE_KEY, self.lora_base)

    def on_train_start(self) -> None:
        # Lightning has loaded the checkpoint's optimizer and scheduler state over the ones
        # configure_optimizers built: put the config's settings back (resume_checks).
        if self._resumed and self._configured is not None:
            self._follow_the_config()

    def _follow_the_config(self) -> None:
        [optimizer], [config] = self.trainer.optimizers, self.trainer.lr_scheduler_configs
        step = self.trainer.global_step
        changed = recipe_changes(self._saved_recipe, trainer_recipe(self.trainer))
        changed += apply_configured(optimizer, config.scheduler, self._configured, step)
        if changed:
            lr = optimizer.param_groups[0]["lr"]
            rank_zero_info(
                f"resumed at step {step} with the config's settings ({', '.join(changed)}): "
                f"lr {lr:.4g} at this step, as a run started with them has it"
            )

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self._rng_states_to_restore is not None:
            if not restore_rank_rng_states(self._rng_states_to_restore):
                rank_zero_warn("the checkpoint's random states are from another world size")
            self._rng_states_to_restore = None

    # --- gradient norm and the divergence guard (train/divergence.py) --------------------------

    def on_before_optimizer_step(self, optimizer) -> None:
        optimizer.__dict__.pop("found_inf", None)  # last step's flag (a GradScaler sets its own)
        self._grad_norm = None
        # self.parameters(): the GPT's, and any head a subclass adds (train/classifier.py)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        sharded = isinstance(self.trainer.strategy, FSDPStrategy) and world_size() > 1
        if not grads and not sharded:
            return
        # Before clipping: the norm the update would have had. Clipping reuses it.
        norm = torch.zeros((), device=self.device)  # a rank may hold no shard of any gradient
        if grads:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if sharded:  # each rank holds a disjoint shard of every gradient: add all the squares
            norm = all_reduce(norm.square(), "sum").sqrt()
        self._grad_norm = norm
        self.log("train/grad_norm", norm, on_step=True)  # read at log steps only
        if self.trainer.precision == "16-mixed":  # the GradScaler skips overflowed steps itself
            return
        # Every rank must take the same decision. Under DDP the gradients are already
        # averaged and under FSDP the norm was just summed, so every rank holds the same norm
        # and the same flag; only another strategy needs the flag reduced. All on the device.
        bad = (~torch.isfinite(norm)).float()  # () 1.0: skip this update
        if world_size() > 1 and not isinstance(self.trainer.strategy, (DDPStrategy, FSDPStrategy)):
            bad = all_reduce(bad, "max")
        self.divergence.record(self.trainer.global_step, bad)
        if skips_on_device(optimizer):
            optimizer.found_inf = bad  # the fused kernel skips the update when it is 1
            return
        # Any other optimizer: read the flag now (one host sync per step) and skip by hand.
        # AdamW leaves a parameter whose gradient is None untouched: no update, no moment
        # decay, no weight decay. The scheduler and the step count still advance.
        if self.divergence.check():
            for param_group in optimizer.param_groups:
                for p in param_group["params"]:
                    p.grad = None

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip with the norm already computed above, on the device. Lightning's own clipping
        refuses fused optimizers under bf16-mixed (a rule meant for fp16's scaled gradients:
        bf16 ones are not scaled), and cannot clip by norm under FSDP at all; here the norm
        is the global one under FSDP too, and scaling each rank's shard by the same factor
        is exact. fp16 runs, whose gradients the GradScaler unscales, keep Lightning's path."""
        if not gradient_clip_val:
            return
        ours = self.trainer.precision != "16-mixed"
        if ours and (gradient_clip_algorithm or "norm") == "norm" and self._grad_norm is not None:
            params = [p for p in self.parameters() if p.grad is not None]
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, self._grad_norm)
        elif ours and gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
        elif self.trainer.precision == "16-mixed" and skips_on_device(optimizer):
            raise UserError(
                "trainer.gradient_clip_val with trainer.precision 16-mixed needs an optimizer "
                "that is not fused: set model.optimizer.init_args.fused: false"
            )
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # The flags are read when Lightning reads its logged metrics anyway (one host sync per
        # log_every_n_steps), and before any checkpoint is saved (on_save_checkpoint).
        if self.trainer.global_step % max(self.trainer.log_every_n_steps, 1) == 0:
            self.divergence.check()
        if self.divergence.skips_to_log:  # here: on_save_checkpoint, which reads them, cannot log
            self.log("train/skipped_steps", float(self.divergence.skipped_steps), on_step=True)
            self.divergence.skips_to_log = False

    def on_train_end(self) -> None:
        self.divergence.check()

    def configure_optimizers(self):
        optimizer, scheduler = self.build_optimizer(self.trainer.estimated_stepping_batches)
        self._configured = configured_settings(optimizer, scheduler)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def build_optimizer(self, total_steps: int):
        """The optimizer over the three param groups, and its scheduler set to ``total_steps``."""
        optimizer = self.optimizer_factory(self.optimizer_groups())
        scheduler = self.scheduler_factory(optimizer)
        if hasattr(scheduler, "set_total_steps"):
            scheduler.set_total_steps(total_steps)
        return optimizer, scheduler

    def optimizer_groups(self) -> list[dict]:
        """The param groups the optimizer is built with (``param_groups``); a subclass that
        adds or freezes parameters says so here."""
        return param_groups(self.gpt, self.param_roles)


def inputs_and_targets(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) inputs and targets of a batch: windows of ids (B, T + 1), or packed chat windows
    (B, 2, T + 1) of ids and their target mask (``data.format: chat``), whose targets are -100
    wherever the mask is 0 (everything but the assistant's tokens)."""
    if batch.dim() == 3:
        ids, mask = batch[:, 0], batch[:, 1]
        return ids[:, :-1], ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return batch[:, :-1], batch[:, 1:]


def _compile_options(mode, dynamic, fullgraph, backend) -> dict:
    """``torch.compile``'s keyword arguments, their values checked up front."""
    import torch._dynamo

    if backend != "inductor" and backend not in torch._dynamo.list_backends(exclude_tags=()):
        listed = ", ".join(torch._dynamo.list_backends())
        raise UserError(
            f"model.compile_backend {backend!r} is not a torch.compile backend: "
            f"one of {listed}, or a debugging one such as aot_eager"
        )
    options = {"dynamic": dynamic, "fullgraph": fullgraph, "backend": backend}
    if mode is not None:
        import torch._inductor

        if backend != "inductor":
            raise UserError(f"model.compile_mode is for the inductor backend, not {backend!r}")
        modes = ", ".join(torch._inductor.list_mode_options())
        if mode not in modes.split(", "):
            raise UserError(f"model.compile_mode {mode!r} is unknown: one of {modes}")
        options["mode"] = mode
    return options


def trainer_recipe(trainer) -> dict:
    """The Trainer settings that shape each step, saved in checkpoints so that a resume
    with other ones names them (they are applied: the data position counts batches)."""
    return {
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "precision": str(trainer.precision),
        "gradient_clip_val": trainer.gradient_clip_val,
    }


def recipe_changes(saved: dict, now: dict) -> list[str]:
    """``trainer.<key> old -> new`` for each setting of ``now`` that ``saved`` holds otherwise."""
    return [
        f"trainer.{key} {saved[key]} -> {value}"
        for key, value in now.items()
        if key in saved and saved[key] != value
    ]
