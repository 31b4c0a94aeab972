"""The facts about a served checkpoint that ``GET /info`` and the chat page show."""

from __future__ import annotations

import math
from pathlib import Path

from lit_gpt_scratch.train.checkpoint_files import LoadedGPT, read_checkpoint

VAL_LOSS = "val/loss"


def model_card(ckpt_path: str | Path, loaded: LoadedGPT, chat: bool) -> dict:
    """Architecture, parameters, tokenizer, training steps and the last validation loss (when
    the checkpoint records one) of the checkpoint at ``ckpt_path``, loaded as ``loaded``."""
    ckpt = read_checkpoint(ckpt_path)  # the training state load_gpt does not keep
    init = loaded.spec.get("init_args", {})
    plugins = {
        key: value["class_path"].rsplit(".", 1)[-1]
        for key, value in init.items()
        if isinstance(value, dict) and "class_path" in value
    }
    return {
        "architecture": loaded.spec.get("class_path", "").rsplit(".", 1)[-1],
        "parameters": loaded.gpt.num_params(),
        "n_layer": init.get("n_layer"),
        "n_head": init.get("n_head"),
        "d_model": init.get("d_model"),
        "block_size": loaded.gpt.block_size,
        "vocab_size": loaded.gpt.vocab_size,
        "plugins": plugins,
        "tokenizer": loaded.tokenizer,
        "chat": chat,
        "steps": ckpt.get("global_step"),
        "val_loss": _val_loss(ckpt),
    }


def _val_loss(ckpt: dict) -> float | None:
    """The validation loss a ModelCheckpoint callback's state records, or None."""
    for state in (ckpt.get("callbacks") or {}).values():
        if not isinstance(state, dict) or state.get("monitor") != VAL_LOSS:
            continue
        for key in ("current_score", "best_model_score"):
            score = state.get(key)
            if score is not None and math.isfinite(float(score)):
                return round(float(score), 4)
    return None
