"""``fit`` / ``validate`` / ``test`` / ``predict``: a LightningCLI over LitGPT and TokenDataModule.

Top-level config sections: ``trainer``, ``model`` (LitGPT: ``gpt``, ``optimizer``,
``lr_scheduler``, ``compile``), ``data`` (TokenDataModule), ``checkpoint`` (ModelCheckpoint),
``lr_monitor``, ``throughput``, ``samples``, ``seed_everything``, ``ckpt_path``. ``data.block_size``
is linked to ``model.gpt.init_args.block_size``: write it once, under ``data``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from lit_gpt_scratch.callbacks import TextSamples, TokenThroughput
from lit_gpt_scratch.checkpoint import is_weights_only, load_weights, read_checkpoint
from lit_gpt_scratch.data.datamodule import TokenDataModule
from lit_gpt_scratch.host_memory import keep_freed_memory
from lit_gpt_scratch.lit_module import LitGPT
from lit_gpt_scratch.preemption import StopOnSignal
from lit_gpt_scratch.runs import newest_resumable, run_of_checkpoint, runs_root

RUNS_DIR = "checkpoints"
log = logging.getLogger(__name__)


class LitGPTCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
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
        parser.add_lightning_class_args(StopOnSignal, "preemption")
        parser.link_arguments("data.block_size", "model.gpt.init_args.block_size")

    def before_instantiate_classes(self) -> None:
        """Resolve ``--ckpt_path last`` to the newest run's ``last.ckpt``, and let a resumed
        ``fit`` write into the run folder its checkpoint came from."""
        self.resume_step: int | None = None
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = runs_root(config.trainer.logger)
        if config.get("ckpt_path") == "last" and root and config.checkpoint.dirpath is None:
            # Lightning looks for "last" in this run's own folder, a new version_N: never there.
            run = newest_resumable(root)
            if run is None:
                rank_zero_only(log.warning)(
                    f"--ckpt_path last: no checkpoint under {root}: a new run starts"
                )
                config.ckpt_path = None
                return
            config.ckpt_path = str(run.last_checkpoint)
            rank_zero_info(f"resuming from {run.last_checkpoint}")
        path = config.get("ckpt_path")
        if self.subcommand != "fit" or root is None or not path or not Path(path).is_file():
            return
        run = run_of_checkpoint(path, root)
        ckpt = read_checkpoint(path)  # memory-mapped: only the loop state is read here
        if run is None or is_weights_only(ckpt):
            return  # a checkpoint from elsewhere starts a new run folder
        config.trainer.logger.init_args.version = run.version
        self.resume_step = int(ckpt["global_step"])  # the step the first resumed batch logs at
        # config.yaml stays the run's first; each resume saves its own config beside it.
        self.save_config_kwargs = {
            **self.save_config_kwargs,
            "config_filename": f"config-resumed-at-step-{self.resume_step}.yaml",
            "overwrite": True,
        }

    def before_fit(self) -> None:
        """``--ckpt_path`` to a weights-only checkpoint (``import_hf``'s) starts a fine-tune:
        the weights load into the configured model; optimizer and step count start fresh."""
        logger = self.trainer.logger
        if self.resume_step is not None and isinstance(logger, TensorBoardLogger):
            # TensorBoard drops the folder's events at steps >= purge_step, the ones logged
            # after the checkpoint: the resumed curve continues with no step shown twice.
            # TensorBoardLogger hands its extra kwargs to the SummaryWriter it creates lazily.
            logger._kwargs["purge_step"] = self.resume_step
        config = self.config_init[self.subcommand]
        path = config.get("ckpt_path")
        if not path or not Path(path).is_file():
            return  # "best", None: Lightning resolves them
        ckpt = read_checkpoint(path)
        if is_weights_only(ckpt):
            load_weights(self.model.gpt, ckpt, path)
            config["ckpt_path"] = None
            rank_zero_info(f"starting from the weights in {path} (fresh optimizer and step count)")


def run(args: list[str]) -> int:
    """Run a LightningCLI subcommand (``args[0]``) with the rest of the command line."""
    keep_freed_memory()
    # LightningCLI reads sys.argv (and warns when given both it and args): hand it ours.
    saved, sys.argv = sys.argv, [f"{Path(sys.argv[0]).name}", *args]
    try:
        cli = _run_cli()
    finally:
        sys.argv = saved
    # Stopped by a signal, after saving: 128 + its number, as a shell reports a signal.
    stoppers = [c for c in cli.trainer.callbacks if isinstance(c, StopOnSignal)]
    stopped_by = next((c.stopped_by for c in stoppers if c.stopped_by), None)
    return 128 + stopped_by if stopped_by else 0


def _run_cli() -> LitGPTCLI:
    return LitGPTCLI(
        LitGPT,
        TokenDataModule,
        auto_configure_optimizers=False,  # LitGPT builds its own param groups
        trainer_defaults={
            "default_root_dir": RUNS_DIR,
            # TokenDataModule gives each rank its own windows: no DistributedSampler on top
            "use_distributed_sampler": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": RUNS_DIR, "name": "run"},
            },
        },
        save_config_kwargs={"overwrite": False},
    )
