"""``val_at_start``: one validation before the first training step of a fresh run, so that the
curves start from the untrained model (a val loss of about ln(vocab_size)) instead of at the
first scheduled validation.

It is a real validation, logged at step 0 like any other (``val/loss``, ``val/ppl``,
``val/bpb``, the named val sets), unlike Lightning's sanity check, which logs nothing. It
leaves training exactly as it would have been without it: the random generators are put back
afterwards (the validation loader's iterator draws its seed from torch's), the validation
windows are not the training sampler's, and no checkpoint is saved at step 0.
"""

from __future__ import annotations

import lightning as L

from lit_gpt_scratch.train.rng import rng_states, set_rng_states


class ValidateAtStart(L.Callback):
    """Validates once when a fresh ``fit`` starts. A resumed run does not: its step-0 point
    was logged when it first started (and TensorBoard keeps it), or it began elsewhere."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not starts_fresh(trainer) or not trainer.enable_validation:
            return
        states = rng_states()
        try:
            validate_now(trainer)
        finally:
            set_rng_states(states)


def starts_fresh(trainer: L.Trainer) -> bool:
    """No checkpoint restored (a weights-only fine-tune loads none: it starts fresh too)."""
    return trainer.ckpt_path is None and trainer.global_step == 0


def validate_now(trainer: L.Trainer) -> None:
    """Run the fit's own validation loop, as Lightning runs it between training batches
    (``_TrainingEpochLoop.on_advance_end``: tests/test_lightning_internals.py checks it)."""
    trainer.validating = True  # the stage that makes the fit's val loop the active one
    try:
        trainer.fit_loop.epoch_loop.val_loop.run()
    finally:
        trainer.training = True
