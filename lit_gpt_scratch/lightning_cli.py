"""``fit`` / ``validate`` / ``test`` / ``predict``: a LightningCLI over LitGPT and TokenDataModule.

Top-level config sections: ``trainer``, ``model`` (LitGPT: ``gpt``, ``optimizer``,
``lr_scheduler``, ``compile``), ``data`` (TokenDataModule), ``checkpoint`` (ModelCheckpoint),
``lr_monitor``, ``throughput``, ``samples``, ``seed_everything``, ``ckpt_path``. ``data.block_size``
is linked to ``model.gpt.init_args.block_size``: write it once, under ``data``.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from lit_gpt_scratch.callbacks import TextSamples, TokenThroughput
from lit_gpt_scratch.data.datamodule import TokenDataModule
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


def run(args: list[str]) -> int:
    """Run a LightningCLI subcommand (``args[0]``) with the rest of the command line."""
    LitGPTCLI(
        LitGPT,
        TokenDataModule,
        args=args,
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
    return 0
