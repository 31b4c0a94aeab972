"""``fit`` / ``validate`` / ``test`` / ``predict``: a LightningCLI over LitGPT and TokenDataModule.

Top-level config sections: ``trainer``, ``model`` (LitGPT: ``gpt``, ``optimizer``,
``lr_scheduler``, ``compile``), ``data`` (TokenDataModule), ``checkpoint`` (ModelCheckpoint),
``lr_monitor``, ``throughput``, ``samples``, ``seed_everything``, ``ckpt_path``. ``data.block_size``
is linked to ``model.gpt.init_args.block_size``: write it once, under ``data``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from lit_gpt_scratch.callbacks import TextSamples, TokenThroughput
from lit_gpt_scratch.checkpoint import is_weights_only, load_weights, read_checkpoint
from lit_gpt_scratch.data.datamodule import TokenDataModule
from lit_gpt_scratch.host_memory import keep_freed_memory
from lit_gpt_scratch.lit_module import LitGPT

RUNS_DIR = "checkpoints"


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
        parser.link_arguments("data.block_size", "model.gpt.init_args.block_size")

    def before_fit(self) -> None:
        """``--ckpt_path`` to a weights-only checkpoint (``import_hf``'s) starts a fine-tune:
        the weights load into the configured model; optimizer and step count start fresh."""
        config = self.config_init[self.subcommand]
        path = config.get("ckpt_path")
        if not path or not Path(path).is_file():
            return  # "last", "best", None: Lightning resolves them
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
        _run_cli()
    finally:
        sys.argv = saved
    return 0


def _run_cli() -> None:
    LitGPTCLI(
        LitGPT,
        TokenDataModule,
        auto_configure_optimizers=False,  # LitGPT builds its own param groups
        trainer_defaults={
            "default_root_dir": RUNS_DIR,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": RUNS_DIR, "name": "run"},
            },
        },
        save_config_kwargs={"overwrite": False},
    )
