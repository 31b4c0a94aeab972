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
