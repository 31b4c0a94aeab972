"""What a ``fit --ckpt_path`` resume accepts, checked before anything is built or written.

A training checkpoint continues exactly only with all its state, its tokenizer, its optimizer
class, its corpus and its data order. What cannot continue is refused in one line naming the
key (the checkpoint's value and the config's); ``data.allow_approximate_resume`` accepts a
missing state, another corpus, other mixture weights, another ``data.seed`` or another
``data.windows``, with a warning. A checkpoint already at ``trainer.max_steps`` has nothing to
train: ``NothingToTrain``, exit code 0.

Changed optimizer and schedule settings (``lr``, ``weight_decay``, ``warmup_steps``,
``min_lr``, a longer ``trainer.max_steps``) are not refused: ``LitGPT`` applies them from the
resumed step (``schedules.apply_configured``); so are another ``accumulate_grad_batches``,
``precision`` or ``gradient_clip_val`` (the data position counts batches, not steps). Each
change is named in one line.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from lit_gpt_scratch.data.datamodule import another_corpus_message, corpus_fingerprint
from lit_gpt_scratch.data.mixture import read_mixture, weights_of
from lit_gpt_scratch.data.mixture_sampler import another_mixture_message
from lit_gpt_scratch.data.samplers import another_seed_message, another_windows_message
from lit_gpt_scratch.data.shards import META
from lit_gpt_scratch.data.windows import read_meta
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

log = logging.getLogger(__name__)

DATA_STATE = "TokenDataModule"  # Lightning saves a data module's state under its class name
# state an exact resume needs -> what resuming without it loses
EXACT_STATE = {
    "loops": "the step count restarts at 0",
    "rng_states": "dropout and sampling draw other random numbers",
    DATA_STATE: "the data order restarts from the first window",
}


class NothingToTrain(Exception):
    """The checkpoint is at or past ``trainer.max_steps``: the run is done (exit code 0)."""


def check_resume(ckpt: dict, path: str, config, sharded: bool = False) -> None:
    """Refuse a resume of ``ckpt`` (the file at ``path``) that would not continue the run
    ``config`` (the ``fit`` namespace) describes; ``NothingToTrain`` if it is done already."""
    allow = bool(config.data.get("allow_approximate_resume"))
    check_complete_state(ckpt, path, allow, sharded)
    check_same_tokenizer(ckpt, path, config.data.tokenizer)
    check_same_optimizer(ckpt, path, config.model.get("optimizer"))
    check_same_mixture(ckpt, config.data.sources, allow)
    check_same_corpus(ckpt, config.data.data_dir, allow)
    check_same_seed(ckpt, config.data.seed, allow)
    windows = "packed" if config.data.get("format") == "chat" else config.data.get("windows")
    check_same_windows(ckpt, windows or "random", allow)
    check_steps_left(ckpt, path, config.trainer.get("max_steps"))


def check_classifier_resume(
    ckpt: dict, path: str, config, sharded: bool = False, data_state: str | None = None
) -> None:
    """``check_resume`` for ``model.head: classification`` and ``model.objective: dpo``: the
    same state, tokenizer, optimizer and steps left; its data position (the sampler of
    ``data_state``, by default ``ClassificationDataModule``) is checked against the seed and
    batch layout when it loads."""
    allow = bool(config.data.get("allow_approximate_resume"))
    exact = {**EXACT_STATE}
    exact[data_state or "ClassificationDataModule"] = exact.pop(DATA_STATE)
    check_complete_state(ckpt, path, allow, sharded, exact)
    check_same_tokenizer(ckpt, path, config.data.tokenizer)
    check_same_optimizer(ckpt, path, config.model.get("optimizer"))
    check_steps_left(ckpt, path, config.trainer.get("max_steps"))


def check_complete_state(
    ckpt: dict, path: str, allow: bool, sharded: bool, exact: dict[str, str] = EXACT_STATE
) -> None:
    # Without an optimizer state Lightning cannot resume at all (a sharded checkpoint keeps
    # it beside its meta.pt, which is all that was read).
    if not sharded and "optimizer_states" not in ckpt:
        raise UserError(
            f"checkpoint {path} holds no optimizer state: it cannot resume a run; start a "
            "new run from its weights instead"
        )
    missing = [key for key in exact if key not in ckpt]
    if not missing:
        return
    losses = "; ".join(f"no {key}: {exact[key]}" for key in missing)
    if not allow:
        raise UserError(
            f"checkpoint {path} lacks state an exact resume needs ({losses}): set "
            "data.allow_approximate_resume: true to resume without it"
        )
    rank_zero_only(log.warning)(f"approximate resume from {path}: {losses}")


def check_same_tokenizer(ckpt: dict, path: str, tokenizer: str) -> None:
    """The model's token ids mean the checkpoint's tokens: another tokenizer is refused
    (the same vocabulary under another name, e.g. a copied .tiktoken file, is accepted)."""
    saved = (ckpt.get("datamodule_hyper_parameters") or {}).get("tokenizer")
    if saved is None or saved == tokenizer or _identity(saved) == _identity(tokenizer):
        return
    raise UserError(
        f"data.tokenizer: {tokenizer!r} in the config, {saved!r} in checkpoint {path}: the "
        f"model's token ids are {saved!r}'s; resume with data.tokenizer {saved!r}, or start a "
        "new run"
    )


def _identity(tokenizer: str) -> str | None:
    try:
        return load_tokenizer(tokenizer).identity
    except UserError:  # the checkpoint's tokenizer file is gone: not provably the same
        return None


def check_same_optimizer(ckpt: dict, path: str, optimizer) -> None:
    """Another optimizer class cannot take the saved optimizer state (AdamW's moments are not
    Muon's momentum). Its settings may change: LitGPT applies them from the resumed step."""
    saved = ((ckpt.get("hyper_parameters") or {}).get("optimizer") or {}).get("class_path")
    configured = optimizer.get("class_path") if optimizer is not None else None
    if saved is None or configured is None or saved == configured:
        return
    raise UserError(
        f"model.optimizer: {configured} in the config, {saved} in checkpoint {path}: its "
        f"saved state is for {saved.rsplit('.', 1)[-1]}; resume with that optimizer, or start "
        "a new run from the checkpoint's weights"
    )


def check_same_corpus(ckpt: dict, data_dir: str, allow: bool) -> None:
    """The saved data position is a position in one corpus. Checked here when ``data_dir`` is
    already prepared; one prepared by this run is checked by the data module on load."""
    saved = ckpt.get(DATA_STATE) or {}
    fingerprint = saved.get("corpus")
    if fingerprint is None or allow or not (Path(data_dir) / META).is_file():
        return
    if corpus_fingerprint(read_meta(data_dir)) != fingerprint:
        raise UserError(another_corpus_message(data_dir, saved.get("data_dir")))


def check_same_mixture(ckpt: dict, sources: list, allow: bool) -> None:
    """A mixture's saved position is one in the schedule of its sources and weights: other
    weights or sources (or one corpus for a mixture, or the reverse) cannot continue it."""
    state = ckpt.get(DATA_STATE) or {}
    if allow or not (state.get("sampler") or state.get("mixture")):
        return
    saved = (state.get("mixture") or {}).get("weights")
    mixture = read_mixture(sources)
    configured = weights_of(mixture) if mixture is not None else None
    if saved is None and configured is None:
        return
    if saved is not None and configured is not None and [*saved.items()] == [*configured.items()]:
        return  # the same sources, in the same order, with the same weights
    raise UserError(another_mixture_message(saved, configured))


def check_same_seed(ckpt: dict, seed: int, allow: bool) -> None:
    state = ckpt.get(DATA_STATE) or {}
    saved = (state.get("sampler") or state.get("mixture") or {}).get("seed")
    if saved is None or saved == seed or allow:
        return
    raise UserError(another_seed_message(seed, saved))


def check_same_windows(ckpt: dict, windows: str, allow: bool) -> None:
    data = ckpt.get(DATA_STATE) or {}
    sampler = data.get("sampler") or data.get("mixture")  # one corpus's, or a mixture's
    saved = (sampler or {}).get("windows", "random")  # a state from before data.windows
    if not sampler or saved == windows or allow:
        return
    raise UserError(another_windows_message(windows, saved))


def check_steps_left(ckpt: dict, path: str, max_steps: int | None) -> None:
    step = ckpt.get("global_step")
    if step is None or max_steps is None or max_steps < 0 or step < max_steps:
        return
    raise NothingToTrain(
        f"checkpoint {path} is at step {step} and trainer.max_steps is {max_steps}: nothing to "
        "train, nothing written (raise trainer.max_steps to train further)"
    )
