"""The private Lightning methods the project relies on, checked so that a Lightning upgrade
that renames or reshapes one fails here, loudly, instead of silently bringing back what the
project switched off."""

from __future__ import annotations

import inspect

from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop


def test_lightnings_per_batch_sigterm_broadcast_is_where_preemption_expects_it():
    # preemption._skip_lightnings_sigterm_broadcast replaces this on the running loop: it
    # reads a broadcast flag on the host before every batch under several processes.
    method = _TrainingEpochLoop._broadcast_sigterm_tensor
    assert list(inspect.signature(method).parameters) == ["self"]
    assert "self._broadcast_sigterm_tensor()" in inspect.getsource(_TrainingEpochLoop.advance)


def test_lightnings_validation_rule_is_where_run_checkpoint_asks_it():
    # checkpoints.validation_due asks it in the batch-end hooks, with the fit loop's fetcher.
    from lightning.pytorch.loops.fit_loop import _FitLoop

    method = _TrainingEpochLoop._should_check_val_fx
    assert list(inspect.signature(method).parameters) == ["self", "data_fetcher"]
    source = inspect.getsource(_TrainingEpochLoop.on_advance_end)
    assert "self._should_check_val_fx(data_fetcher)" in source
    assert "self._data_fetcher" in inspect.getsource(_FitLoop)
    # it reads should_stop, which validation_due sets aside for the length of the call
    assert "self.trainer.should_stop" in inspect.getsource(method)


def test_lightning_cli_calls_the_checkpoint_step_it_switches_off_and_the_trainer_builder():
    # cli/lightning_cli.LitGPTCLI overrides both: the first with a no-op (Lightning's loads the
    # checkpoint and swaps the model), the second to choose the Trainer's callbacks.
    from lightning.pytorch.cli import LightningCLI

    init = inspect.getsource(LightningCLI.__init__)
    assert "self._parse_ckpt_path()" in init
    assert init.index("self._parse_ckpt_path()") < init.index("self.before_instantiate_classes()")
    assert list(inspect.signature(LightningCLI._parse_ckpt_path).parameters) == ["self"]
    builder = LightningCLI._instantiate_trainer
    assert list(inspect.signature(builder).parameters) == ["self", "config", "callbacks"]
    assert "self._instantiate_trainer(" in inspect.getsource(LightningCLI.instantiate_trainer)


def test_tensorboard_logger_hands_its_extra_kwargs_to_the_summary_writer():
    # LitGPTCLI.before_fit sets _kwargs["purge_step"] before the writer exists, so a resumed
    # run's curve drops the events logged after its checkpoint.
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger("unused", purge_step=3)
    assert logger._kwargs == {"purge_step": 3}
    source = inspect.getsource(type(logger).experiment.fget)
    assert "**self._kwargs" in source


def test_lightnings_validation_between_batches_is_what_validate_at_start_repeats():
    # validate_at_start.validate_now runs the fit's val loop before the first batch the way
    # the epoch loop runs it between batches: the validating stage set, then training again.
    source = inspect.getsource(_TrainingEpochLoop.on_advance_end)
    run = source.index("self.val_loop.run()")
    assert source.index("self.trainer.validating = True") < run
    assert run < source.index("self.trainer.training = True")
