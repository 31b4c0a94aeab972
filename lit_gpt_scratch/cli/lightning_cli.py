"""``fit`` / ``validate`` / ``test`` / ``predict``: a LightningCLI over LitGPT and TokenDataModule.

Top-level config sections: ``trainer``, ``model`` (LitGPT: ``gpt``, ``optimizer``,
``lr_scheduler``, ``compile``), ``data`` (TokenDataModule), ``checkpoint`` (ModelCheckpoint),
``lr_monitor``, ``throughput``, ``samples``, ``downstream``, ``preemption``, and the top-level
keys ``seed_everything``, ``ckpt_path``, ``global_batch_size`` (sets the accumulation from the
device count), ``val_every_n_steps`` and ``val_at_start``. ``data.block_size`` is linked to
``model.gpt.init_args.block_size``: write it once, under ``data``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
from pathlib import Path

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.callbacks import ProgressBar as LightningProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, StrategyRegistry
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lit_gpt_scratch.cli.resume_checks import NothingToTrain, check_classifier_resume, check_resume
from lit_gpt_scratch.cli.strict_yaml import config_files
from lit_gpt_scratch.data.classification import ClassificationDataModule
from lit_gpt_scratch.data.datamodule import TokenDataModule
from lit_gpt_scratch.data.preference import PreferenceDataModule
from lit_gpt_scratch.errors import UserError, check_above, check_at_least, one_line
from lit_gpt_scratch.files import FolderLock, remove_stale
from lit_gpt_scratch.model.build import first_difference
from lit_gpt_scratch.train.callbacks import TextSamples, TokenThroughput
from lit_gpt_scratch.train.checkpoint_files import (
    check_weights_finite,
    check_weights_fit,
    expected_weights,
    gpt_weights,
    is_sharded,
    is_weights_only,
    load_lora_base,
    load_weights,
    read_checkpoint,
    with_grown_vocabulary,
)
from lit_gpt_scratch.train.checkpoint_io import install_atomic_checkpoint_io
from lit_gpt_scratch.train.checkpoints import RunCheckpoint, last_candidates_in
from lit_gpt_scratch.train.classifier import LitClassifier
from lit_gpt_scratch.train.console import ModelSummary, ProgressBar, quiet_lightning
from lit_gpt_scratch.train.downstream import DownstreamEval
from lit_gpt_scratch.train.dpo import LitDPO
from lit_gpt_scratch.train.fine_tune_start import check_tokenizer_extends, weights_start_reason
from lit_gpt_scratch.train.host_memory import keep_freed_memory
from lit_gpt_scratch.train.lora_checkpoints import (
    BASE_KEY,
    base_record,
    is_adapters_only,
    lora_settings,
    saved_lora,
    settings_difference,
)
from lit_gpt_scratch.train.module import LitGPT
from lit_gpt_scratch.train.preemption import StopOnSignal, handlers_kept_until_done
from lit_gpt_scratch.train.run_folders import (
    RunFolder,
    forget_new_runs,
    last_candidates,
    lock_run,
    new_run,
    newest_resumable,
    reusable_empty_run,
    run_of_checkpoint,
    runs_root,
)
from lit_gpt_scratch.train.validate_at_start import ValidateAtStart

# `strategy: ddp`, and the DDP that `auto` picks for several devices: gradients live as views
# into DDP's all-reduce buckets instead of beside them, a gradient-sized copy less (0.5 GB at
# 124M in fp32, 6 GB at 1558M). An explicit DDPStrategy class_path keeps torch's default.
StrategyRegistry.register(
    "ddp",
    DDPStrategy,
    description="DDP with gradients as bucket views",
    override=True,
    start_method="popen",
    gradient_as_bucket_view=True,
)

RUNS_DIR = "checkpoints"
# ckpt_path values Lightning resolves itself (with checkpoint.dirpath set, "last" too)
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")
log = logging.getLogger(__name__)
# The run folder of this command, for the ranks rank 0 launches (they inherit its environment).
RUN_FOLDER_ENV = "LIT_GPT_SCRATCH_RUN_FOLDER"
_HELD_LOCKS: list[FolderLock] = []
# Keys the parser fills from another (jsonargparse drops a value given for them silently).
LINKED_KEYS = {"model.gpt.init_args.block_size": "data.block_size"}
# model.head: classification (train/classifier.py) trains LitClassifier on labelled texts
CLASSIFIER_LINKED_KEYS = {**LINKED_KEYS, "data.n_classes": "model.n_classes"}
HEADS = ("classification",)
# model.objective: dpo (train/dpo.py) trains LitDPO on preference pairs
OBJECTIVES = ("dpo",)


class LitGPTCLI(LightningCLI):
    linked_keys = LINKED_KEYS

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "step={step}-val_loss={val/loss:.3f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_lightning_class_args(TokenThroughput, "throughput")
        parser.add_lightning_class_args(TextSamples, "samples")
        parser.add_lightning_class_args(DownstreamEval, "downstream")
        parser.add_lightning_class_args(StopOnSignal, "preemption")
        for target, source in self.linked_keys.items():
            parser.link_arguments(source, target)
        parser.add_argument(
            "--global_batch_size",
            type=int | None,
            default=None,
            help="Windows per optimizer step, all devices together. Set, it fixes "
            "trainer.accumulate_grad_batches to global_batch_size / (data.batch_size x "
            "devices x nodes), so the recipe stays the same on any number of GPUs.",
        )
        parser.add_argument(
            "--val_every_n_steps",
            type=int | None,
            default=None,
            help="Validate every this many optimizer steps, whatever the accumulation "
            "(instead of trainer.val_check_interval, which counts batches per device).",
        )
        parser.add_argument(
            "--val_at_start",
            type=bool,
            default=True,
            help="Validate once before the first step of a fresh fit (not of a resume), "
            "logged at step 0: the curves start from the untrained model. Training is the "
            "same with or without it.",
        )

    # Private Lightning methods overridden here, each for want of a public hook, and each
    # checked by tests/test_lightning_internals.py so that an upgrade that renames or reshapes
    # one fails there: _parse_ckpt_path (switched off), _instantiate_trainer (the callbacks
    # given to the Trainer), and TensorBoardLogger._kwargs in before_fit (purge_step).

    def _parse_ckpt_path(self) -> None:
        """Switched off. LightningCLI's own step loads the whole checkpoint (a damaged one
        gives a traceback) and silently swaps the configured model for the checkpoint's;
        ``before_instantiate_classes`` checks ``--ckpt_path`` instead."""

    def before_instantiate_classes(self) -> None:
        """Check ``--ckpt_path`` before anything reads it.

        The config stays the source of truth: ``last`` becomes the newest readable last
        checkpoint of this config's runs, a missing or damaged file is a one-line error naming
        it, and a training checkpoint of another model is refused naming the first setting that
        differs. A resumed ``fit`` writes into the run folder its checkpoint came from.
        """
        self.resume_step: int | None = None
        self._weights_start: str | None = None  # why --ckpt_path is a weights start, if it is
        self.purge_step: int | None = None  # TensorBoard drops the run folder's events from it
        self._nothing_to_resume = False
        self._lora_base_of_resume: dict | None = None  # a LoRA checkpoint's base record
        if not self.config.get("subcommand"):
            return
        config = self.config[self.config.subcommand]
        root = runs_root(config.trainer.logger)  # also refuses a run name that climbs out
        resumed = self._resolve_ckpt_path(config, root)
        if root is not None:
            self._claim_run_folder(config, root, resumed)

    def _resolve_ckpt_path(self, config, root: Path | None) -> RunFolder | None:
        """``--ckpt_path`` checked and resolved; the run folder a ``fit`` resumes, if any."""
        path = config.get("ckpt_path")
        if not path:
            return None
        if path == "last" and root and config.checkpoint.dirpath is None:
            # Lightning looks for "last" in this run's own folder, a new version_N: never there.
            path = config.ckpt_path = self._newest_readable_last(root)
        if path == "best":
            # Lightning knows a best checkpoint only within the process that saved it.
            dirpath = config.checkpoint.dirpath
            path = config.ckpt_path = str(best_checkpoint(root, dirpath and Path(dirpath)))
        if path is None or path in LIGHTNING_CKPT_NAMES:
            return None
        # memory-mapped: cheap, and it names a damaged file; of a sharded one, its meta.pt
        ckpt = read_checkpoint(path, sharded=True)
        if is_weights_only(ckpt):
            return None  # a fine-tune: before_fit checks the tensors fit the configured model
        if another_head(ckpt, config):  # a pretraining checkpoint starting a classifier
            if self.config.subcommand != "fit":
                raise UserError(
                    f"checkpoint {path} is a model with another head or objective than "
                    f"the config's: fine-tune it first (fit --ckpt_path {path})"
                )
            return None  # its weights start the fine-tune (before_fit)
        reason = weights_start_reason(ckpt, config.data.get("format", "text"))
        if reason and self.config.subcommand == "fit":  # another run's data: a fine-tune
            check_tokenizer_extends(ckpt, path, config.data.tokenizer)
            self._weights_start = f"{path} starts a fine-tune from its weights ({reason})"
            return None
        difference = first_difference(ckpt["hyper_parameters"]["gpt"], config.model.gpt.as_dict())
        configured_lora = config.model.get("lora")
        configured_lora = None if configured_lora is None else lora_settings(configured_lora)
        if not difference and configured_lora is not None and saved_lora(ckpt) is None:
            return None  # a base model's checkpoint: a LoRA fine-tune starts from its weights
        difference = difference or settings_difference(saved_lora(ckpt), configured_lora)
        if difference:
            raise UserError(f"checkpoint {path} holds another model than the config: {difference}")
        self._lora_base_of_resume = ckpt.get(BASE_KEY)
        if self.config.subcommand == "fit":  # Lightning will resume its training state
            if config.model.get("head") or config.model.get("objective"):
                state = "PreferenceDataModule" if config.model.get("objective") else None
                check_classifier_resume(ckpt, path, config, is_sharded(path), state)
            else:
                check_resume(ckpt, path, config, sharded=is_sharded(path))
        run = run_of_checkpoint(path, root) if root else None
        if self.config.subcommand != "fit":
            return None  # evaluating: a new run folder
        if run is None:
            where = f"one of this config's runs (under {root})" if root else "a run folder"
            rank_zero_info(
                f"{path} is not in {where}: training continues in a new run folder, its "
                "curves starting at the checkpoint's step"
            )
            return None
        self.resume_step = self.purge_step = int(ckpt["global_step"])  # its first batch's step
        # config.yaml stays the run's first; each resume saves its own config beside it.
        self.save_config_kwargs = {
            **self.save_config_kwargs,
            "config_filename": f"config-resumed-at-step-{self.resume_step}.yaml",
            "overwrite": True,
        }
        return run

    def _claim_run_folder(self, config, root: Path, resumed: RunFolder | None) -> None:
        """Lock the run folder this process writes (the resumed one, the config's version, a
        restart's empty one, else a new ``version_N``) and point the logger at it."""
        init_args = config.trainer.logger.init_args
        if not hasattr(init_args, "version"):
            return  # a logger without version folders
        if rank_zero_only.rank != 0:
            # Rank 0 holds the lock. The ranks it launched on its node learn its folder here;
            # elsewhere Lightning broadcasts rank 0's folder wherever one is written.
            if resumed is None and init_args.version is None:
                init_args.version = os.environ.get(RUN_FOLDER_ENV)
            return
        if resumed is not None:
            run, lock = resumed, lock_run(resumed)
            _remove_stale_temporaries(run)  # only now: no other process is saving into it
        elif init_args.version is not None:
            version = init_args.version
            run = RunFolder(root, version if isinstance(version, str) else f"version_{version}")
            lock = lock_run(run)
        elif self._nothing_to_resume and (reused := reusable_empty_run(root)):
            run, lock = reused
            _remove_stale_temporaries(run)
            self.purge_step = 0  # the events of the tries that came before
            self.save_config_kwargs = {**self.save_config_kwargs, "overwrite": True}
            rank_zero_info(f"starting in {run.path}, which holds no checkpoint yet")
        else:
            run, lock = new_run(root)
        init_args.version = run.version
        _HELD_LOCKS.append(lock)
        os.environ[RUN_FOLDER_ENV] = run.version

    def _newest_readable_last(self, root: Path) -> str | None:
        run = newest_resumable(root)
        if run is None:
            message = f"--ckpt_path last: no checkpoint under {root}: a new run starts"
            rank_zero_only(log.warning)(message)
            self._nothing_to_resume = True
            return None
        skipped = False
        for candidate in last_candidates(run):
            try:
                ckpt = read_checkpoint(candidate, sharded=True)
                if not is_sharded(candidate):  # a sharded one's weights: read by FSDP only
                    check_weights_finite(ckpt, candidate)  # damage that kept the file valid
            except UserError as e:
                skipped = True
                # Set aside (kept for a look), so later rotations keep only good files.
                if rank_zero_only.rank == 0 and candidate.exists():
                    os.replace(candidate, candidate.with_name(candidate.name + ".unreadable"))
                rank_zero_only(log.warning)(f"{e}: renamed to {candidate.name}.unreadable")
                continue
            if skipped:
                rank_zero_only(log.warning)(f"resuming from the older {candidate} instead")
            rank_zero_info(f"resuming from {candidate}")
            return str(candidate)
        raise UserError(f"--ckpt_path last: no readable checkpoint in {run.path / 'checkpoints'}")

    def _instantiate_trainer(self, config: dict, callbacks: list):
        # trainer.enable_checkpointing: false means no checkpoint: leave out `checkpoint:`'s
        # callback rather than let the Trainer refuse the combination.
        # Likewise trainer.logger: false leaves out the learning-rate monitor, which logs only.
        _check_trainer_options(config)
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, RunCheckpoint)]
        if config.get("logger") is False:
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        # Our progress bar and model summary, unless the config names its own: the stock bar
        # syncs with the GPU at every step to show the loss, and the stock summary shows
        # "FLOPs: 0" (it has no example input to count them on).
        given = [*callbacks, *(config.get("callbacks") or [])]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, LightningProgressBar) for c in given
        ):
            callbacks = [*callbacks, ProgressBar()]
        if config.get("enable_model_summary") is not False and not any(
            isinstance(c, LightningModelSummary) for c in given
        ):
            callbacks = [*callbacks, ModelSummary()]
        callbacks = [*callbacks, _RunFolderKept()]
        try:
            trainer = super()._instantiate_trainer(config, callbacks)
        except ValueError as e:  # the Trainer's own checks of its arguments (strategy, devices)
            raise UserError(one_line(e)) from None
        install_atomic_checkpoint_io(trainer.strategy)  # never a copy from $TMPDIR over a link
        return trainer

    def before_fit(self) -> None:
        """``global_batch_size`` sets the accumulation, ``val_every_n_steps`` the
        validation interval in batches and ``val_at_start`` adds the validation at step 0.
        ``--ckpt_path`` to a weights-only checkpoint (``import_hf``'s) starts a fine-tune: the
        weights load into the configured model; optimizer and step count start fresh."""
        self._accumulate_for_global_batch()
        self._validate_every_n_steps()
        if self.config[self.subcommand].get("val_at_start"):
            self.trainer.callbacks.append(ValidateAtStart())
        logger = self.trainer.logger
        if self.purge_step is not None and isinstance(logger, TensorBoardLogger):
            # TensorBoard drops the folder's events at steps >= purge_step, the ones logged
            # after the checkpoint: the resumed curve continues with no step shown twice.
            # TensorBoardLogger hands its extra kwargs to the SummaryWriter it creates lazily.
            logger._kwargs["purge_step"] = self.purge_step
        ckpt = self._checkpoint_that_fits(weights_start=True)
        starts = ckpt is not None and another_head(ckpt, self.config[self.subcommand])
        lora = getattr(self.model, "lora", None)
        base_start = ckpt is not None and lora is not None and saved_lora(ckpt) is None
        if ckpt is not None and (
            is_weights_only(ckpt) or starts or base_start or self._weights_start
        ):
            config = self.config_init[self.subcommand]
            path = config["ckpt_path"]
            load_weights(self.model.gpt, ckpt, path)  # with LoRA: into the frozen base weights
            if lora is not None:  # the base file's own weights, before any vocabulary growth
                self.model.lora_base = base_record(path, gpt_weights(read_checkpoint(path)))
            config["ckpt_path"] = None
            if self._weights_start:
                rank_zero_info(self._weights_start)
            rank_zero_info(f"starting from the weights in {path} (fresh optimizer and step count)")
        if lora is not None and self.model.lora_base is None:
            self.model.lora_base = self._lora_base_of_resume
        if lora is not None and self.model.lora_base is None:
            raise UserError(
                "model.lora fine-tunes a base model: give its checkpoint with --ckpt_path "
                "(a fit checkpoint, or one import_hf or consolidate wrote)"
            )

    def _accumulate_for_global_batch(self) -> None:
        config = self.config[self.subcommand]
        global_batch = config.get("global_batch_size")
        if global_batch is None:
            return
        check_at_least("global_batch_size", global_batch, 1)
        per_device, world = config.data.batch_size, self.trainer.world_size
        accumulate, rest = divmod(global_batch, per_device * world)
        if rest or not accumulate:
            raise UserError(
                f"global_batch_size {global_batch} is not a multiple of data.batch_size "
                f"{per_device} x {world} devices = {per_device * world}: change data.batch_size"
            )
        given = config.trainer.accumulate_grad_batches
        if given not in (1, accumulate):
            raise UserError(
                f"trainer.accumulate_grad_batches {given} contradicts global_batch_size "
                f"{global_batch} ({per_device} x {world} devices x {accumulate}): set only one"
            )
        self.trainer.accumulate_grad_batches = accumulate
        rank_zero_info(
            f"global batch {global_batch} windows = data.batch_size {per_device} x {world} "
            f"devices x {accumulate} accumulated"
        )

    def _validate_every_n_steps(self) -> None:
        config = self.config[self.subcommand]
        steps = config.get("val_every_n_steps")
        if steps is None:
            return
        if steps < 1:
            raise UserError(f"val_every_n_steps must be at least 1, got {steps}")
        if config.trainer.val_check_interval is not None:
            raise UserError(
                f"val_every_n_steps {steps} and trainer.val_check_interval "
                f"{config.trainer.val_check_interval} both set: set only one"
            )
        # Read by the fit loop when fit starts: batches per device between validations.
        self.trainer.val_check_interval = steps * self.trainer.accumulate_grad_batches

    def _checkpoint_that_fits(self, weights_start: bool = False) -> dict | None:
        """The --ckpt_path file's dict, after checking its tensors fit the configured model.
        ``weights_start``: a fit's weights start may grow the vocabulary (fine_tune_start)."""
        path = self.config_init[self.subcommand].get("ckpt_path")
        if path and is_sharded(path) and not isinstance(self.trainer.strategy, FSDPStrategy):
            raise UserError(
                f"checkpoint {path} is sharded (FSDP): resume it with the FSDP strategy, or "
                f"make one file of its weights (python -m lit_gpt_scratch consolidate "
                f"--ckpt_path {path} --out FILE) to start from"
            )
        if not path or not Path(path).is_file():
            return None  # "best", None: Lightning resolves them
        ckpt = read_checkpoint(path)
        if weights_start and (is_weights_only(ckpt) or getattr(self, "_weights_start", None)):
            ckpt = with_grown_vocabulary(self.model.gpt, ckpt)  # new rows: the old rows' mean
        check_weights_fit(self.model.gpt, ckpt, path)  # names the first mismatching parameter
        check_weights_finite(ckpt, path)  # a resume or a fine-tune from NaN weights: refused
        if is_adapters_only(ckpt):  # a LoRA run's: the base weights come from its base file
            load_lora_base(self.model.gpt, ckpt, path)
        if len(expected_weights(self.model.gpt, ckpt)) < len(self.model.gpt.state_dict()):
            # Lightning loads the part the checkpoint holds (its keys are checked above): the
            # adapters over the base just loaded, or a base model's weights under new adapters
            self.model.strict_loading = False
        return ckpt

    # evaluating a fine-tune's starting point (import_hf) checks the tensors too
    before_validate = before_test = before_predict = _checkpoint_that_fits


class ClassifierCLI(LitGPTCLI):
    """``fit`` and the rest for ``model.head: classification``: LitClassifier on a
    ClassificationDataModule, ``model.n_classes`` linked to ``data.n_classes``."""

    linked_keys = CLASSIFIER_LINKED_KEYS


def another_head(ckpt: dict, config) -> bool:
    """Whether the checkpoint's model has another head or objective than the config's (a
    pretraining checkpoint given to a classifier's fit, a chat model's to a DPO fit): then
    only its GPT weights are used."""
    saved = ckpt.get("hyper_parameters") or {}
    return any(saved.get(key) != config.model.get(key) for key in ("head", "objective"))


def configured_head(args: list[str]) -> str | None:
    """``model.head`` as the ``--config`` files and the command line set it, the last one
    winning as in jsonargparse (None: a language model). Read before the CLI is built: the
    head decides which LightningModule and data module the CLI is for."""
    head = _configured(args, "head")
    if head is not None and head not in HEADS:
        raise UserError(
            f"model.head {head!r} is not a head: {', '.join(HEADS)}, or leave it out for "
            "next-token prediction"
        )
    return head


def configured_objective(args: list[str]) -> str | None:
    """``model.objective`` as ``configured_head`` reads ``model.head`` (None: next-token
    prediction); ``dpo`` makes the CLI one for LitDPO and PreferenceDataModule."""
    objective = _configured(args, "objective")
    if objective is not None and objective not in OBJECTIVES:
        raise UserError(
            f"model.objective {objective!r} is not an objective: {', '.join(OBJECTIVES)}, or "
            "leave it out for next-token prediction"
        )
    return objective


def _configured(args: list[str], key: str):
    """``model.<key>`` as the ``--config`` files and the command line set it, the last one
    winning as in jsonargparse; None if none sets it."""
    found = None
    for i, arg in enumerate(args):
        value = None
        if arg == "--config" and i + 1 < len(args) or arg.startswith("--config="):
            path = args[i + 1] if arg == "--config" else arg.removeprefix("--config=")
            value = _value_in(path, ["model", key])
        elif arg == f"--model.{key}" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"--model.{key}="):
            value = arg.removeprefix(f"--model.{key}=")
        if value is not None:
            found = value
    return found


def _value_in(path: str, parts: list[str]):
    """The value at ``parts`` of the YAML file at ``path``, or None."""
    try:
        node = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # check_config_files and jsonargparse name a bad file
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


class _RunFolderKept(Callback):
    """From the start of the run's loop on, a new run folder is kept, whatever comes next;
    before it, a failure takes the folder away (run_folders.forget_new_runs). A run folder
    removed while training stops the run in one line, before a save re-creates it half-empty
    (or TensorBoard's writer fails on it with a traceback)."""

    _folder: Path | None = None

    def _keep(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            forget_new_runs(remove=False)
        self._folder = Path(trainer.log_dir) if trainer.logger and trainer.log_dir else None

    on_train_start = on_validation_start = on_test_start = on_predict_start = _keep

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._folder is not None and trainer.is_global_zero and not self._folder.is_dir():
            raise UserError(removed_run_message(self._folder))


def best_checkpoint(root: Path | None, dirpath: Path | None) -> Path:
    """``--ckpt_path best``: the best checkpoint (by ``checkpoint.monitor``) that the newest
    readable last checkpoint records, in ``checkpoint.dirpath`` when the config sets one, else
    in the newest run folder of this config (under ``root``)."""
    if dirpath is not None:
        folder, where = dirpath, f"checkpoint.dirpath {dirpath}"
    elif root is not None:
        run = newest_resumable(root)
        folder, where = run and run.path / "checkpoints", f"the runs under {root}"
    else:
        raise UserError(
            "--ckpt_path best: this config keeps no run folders (no logger) and sets no "
            "checkpoint.dirpath, so there is no best checkpoint to find: give a checkpoint file"
        )
    candidates = [] if folder is None else last_candidates_in(folder)
    for candidate in candidates:
        try:
            callbacks = read_checkpoint(candidate, sharded=True).get("callbacks") or {}
        except UserError:
            continue
        for state in callbacks.values():
            best = state.get("best_model_path") if isinstance(state, dict) else None
            if best:  # by its name in this folder: the run folder may have moved since
                path = folder / Path(best).name
                if path.exists():
                    return path
        break
    raise UserError(
        f"--ckpt_path best: no best checkpoint in {where} (one is kept at each "
        "validation that improves checkpoint.monitor): train first, resume with --ckpt_path "
        "last, or give a checkpoint file"
    )


def _remove_stale_temporaries(run) -> None:
    """A save killed midway leaves its temporary file beside the checkpoints: a resume of the
    run removes them (rank 0, before any save of this run)."""
    if rank_zero_only.rank != 0:
        return
    removed = remove_stale(run.path / "checkpoints")
    if removed:
        names = ", ".join(p.name for p in removed)
        rank_zero_info(f"removed the temporary files of saves that did not finish: {names}")


def _check_trainer_options(config: dict) -> None:
    """Trainer options Lightning accepts but that cannot train: refused in one line (a
    negative clip value would turn clipping into gradient ascent)."""
    check_at_least("trainer.accumulate_grad_batches", config.get("accumulate_grad_batches", 1), 1)
    for key, minimum in (("gradient_clip_val", 0), ("log_every_n_steps", 1)):
        if config.get(key) is not None:
            check_at_least(f"trainer.{key}", config[key], minimum)
    if config.get("val_check_interval") is not None:
        check_above("trainer.val_check_interval", config["val_check_interval"], 0)
    max_steps = config.get("max_steps")
    if max_steps is not None and max_steps != -1 and max_steps < 1:
        raise UserError(f"trainer.max_steps must be -1 (no limit) or at least 1, got {max_steps}")


def run(args: list[str]) -> int:
    """Run a LightningCLI subcommand (``args[0]``) with the rest of the command line."""
    keep_freed_memory()
    quiet_lightning()
    # LightningCLI reads sys.argv (and warns when given both it and args): hand it ours.
    classifier = configured_head(args) == "classification"
    objective = configured_objective(args)
    if classifier and objective:
        raise UserError(
            f"model.head classification and model.objective {objective} both set: a "
            "classifier has no objective to choose, set only one"
        )
    refuse_linked_keys(args, CLASSIFIER_LINKED_KEYS if classifier else LINKED_KEYS)
    saved, sys.argv = sys.argv, [f"{Path(sys.argv[0]).name}", *args]
    started = False
    try:
        with handlers_kept_until_done(), _quiet_writer_of_a_removed_run():
            cli = _run_cli(classifier, objective)
        started = True
    except FileNotFoundError:
        folder = _removed_run_folder()
        if folder is None:
            raise
        raise UserError(removed_run_message(folder)) from None
    except NothingToTrain as e:  # a finished run resumed again (a requeue): done, say so
        rank_zero_only(print)(e, file=sys.stderr)
        return 0
    except MisconfigurationException as e:  # Lightning's word for a bad combination of options
        raise UserError(one_line(e)) from None
    except argparse.ArgumentError as e:  # an unknown key, a bad value
        raise UserError(f"{one_line(e)} (see --help)") from None
    except RuntimeError as e:
        if not str(e).startswith("SaveConfigCallback expected"):
            raise
        # Without a logger there is no run folder: the config would land where the last one did.
        raise UserError(
            f"{str(e).split(' to NOT exist')[0].split('expected ')[-1]} exists from an earlier "
            "run: keep a logger (each run gets its own folder) or set trainer.default_root_dir"
        ) from None
    finally:
        sys.argv = saved
        _release_run_folders(failed=not started)
    # Stopped by a signal, after saving: 128 + its number, as a shell reports a signal.
    stoppers = [c for c in cli.trainer.callbacks if isinstance(c, StopOnSignal)]
    stopped_by = next((c.stopped_by for c in stoppers if c.stopped_by), None)
    return 128 + stopped_by if stopped_by else 0


def refuse_linked_keys(args: list[str], links: dict[str, str] = LINKED_KEYS) -> None:
    """A value for a linked key (``model.gpt.init_args.block_size``), in a ``--config`` file
    or on the command line, is refused: jsonargparse would overwrite it with its source's
    without a word, and the run would train another context length than the config says."""
    for target, source in links.items():
        given = [
            "on the command line"
            for a in args
            if a.split("=")[0] in (f"--{target}", f"--{_short(target)}")
        ]
        given += [f"in config {path}" for path in config_files(args) if _holds(path, target)]
        if given:
            raise UserError(
                f"{target} (given {given[0]}) is set from {source}, to which it is linked: "
                f"set {source} instead"
            )


def _short(key: str) -> str:
    return key.replace(".init_args.", ".")  # jsonargparse accepts both spellings


def _holds(path: str, key: str) -> bool:
    """Whether the YAML file at ``path`` sets ``key`` (dotted; ``init_args`` optional)."""
    try:
        node = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # check_config_files and jsonargparse name a bad file
    return _lookup(node, key.split(".")) or _lookup(node, _short(key).split("."))


def _lookup(node, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def removed_run_message(folder: Path) -> str:
    return (
        f"run folder {folder} was removed while this run wrote to it: stopped; its "
        "checkpoints went with it"
    )


def _removed_run_folder() -> Path | None:
    """The run folder this command holds, if it no longer exists."""
    folders = [lock.folder for lock in _HELD_LOCKS]
    return next((f for f in folders if not f.exists()), None)


@contextlib.contextmanager
def _quiet_writer_of_a_removed_run():
    """TensorBoard writes its events from a thread of its own: when the run folder is removed
    under it, that thread dies with a traceback of its own. The main thread reports that in
    one line (``removed_run_message``); the thread's traceback is left out."""
    default = threading.excepthook

    def hook(args) -> None:
        if not (issubclass(args.exc_type, FileNotFoundError) and _removed_run_folder()):
            default(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = default


def _release_run_folders(failed: bool) -> None:
    """The run folder's lock ends with the command (the kernel drops it at any exit; this is
    for a caller that runs several commands in one process). A command that failed before
    its loop began leaves no new run folder behind."""
    forget_new_runs(remove=failed and rank_zero_only.rank == 0)
    while _HELD_LOCKS:
        _HELD_LOCKS.pop().release()
    os.environ.pop(RUN_FOLDER_ENV, None)


def _run_cli(classifier: bool = False, objective: str | None = None) -> LitGPTCLI:
    if classifier:
        return ClassifierCLI(LitClassifier, ClassificationDataModule, **_cli_options())
    if objective == "dpo":
        return LitGPTCLI(LitDPO, PreferenceDataModule, **_cli_options())
    return LitGPTCLI(LitGPT, TokenDataModule, **_cli_options())


def _cli_options() -> dict:
    """LitGPTCLI's options, the same for a run and for ``training_config_keys``."""
    return {
        "auto_configure_optimizers": False,  # LitGPT builds its own param groups
        "trainer_defaults": {
            "default_root_dir": RUNS_DIR,
            # TokenDataModule gives each rank its own windows: no DistributedSampler on top
            "use_distributed_sampler": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": RUNS_DIR, "name": "run"},
            },
        },
        "save_config_kwargs": {"overwrite": False},
        # A bad key raises (run() makes it one line) instead of printing the whole usage;
        # no abbreviations, so a typo such as --trainer.max_step is an error, not max_steps.
        "parser_kwargs": {"exit_on_error": False, "allow_abbrev": False},
    }


class _ParserBuilt(Exception):
    """Carries the parser out of LightningCLI's constructor, which parses as soon as it has
    built it: ``training_config_keys`` wants the parser, not a run."""

    def __init__(self, parser: LightningArgumentParser):
        super().__init__("parser built")
        self.parser = parser


class _TrainingParser(LitGPTCLI):
    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        raise _ParserBuilt(parser)


def training_config_keys() -> list[str]:
    """The top-level keys of a ``fit`` config, read off the parser ``fit`` builds: the
    sections LitGPTCLI adds, Lightning's own (``trainer``, ``model``, ``data``,
    ``seed_everything``) and ``Trainer.fit``'s arguments (``ckpt_path``, ``weights_only``).
    ``prepare`` accepts them all. Builds the parser only (a fraction of a second: Lightning is
    imported already), parses and instantiates nothing."""
    try:
        _TrainingParser(LitGPT, TokenDataModule, run=False, **_cli_options())
    except _ParserBuilt as built:
        parser = built.parser
    # run=False leaves out the subcommand's arguments: added as Lightning adds them to fit's
    fit_skips = set(LightningCLI.subcommands()["fit"])
    parser.add_method_arguments(Trainer, "fit", skip=fit_skips)
    return list(parser.get_defaults().as_dict())
