"""Starting a fine-tune from another run's checkpoint: which checkpoints start one, and how the
embedding and head grow to a vocabulary with added tokens (the chat tokens).

The rule: ``fit --ckpt_path C`` resumes C's run when C was trained on data of the config's
``data.format``; when it was not (a pretraining checkpoint, ``text``, given to a chat config),
C is a *weights start*, as a weights-only file is: its weights, a fresh optimizer, step count
and data order. ``--ckpt_path last`` of the fine-tune's own run resumes it exactly.

A vocabulary with more ids than the checkpoint's (``stdlib-4k+chat`` after ``stdlib-4k``) gets
new rows in ``wte`` and ``lm_head`` (and in the padding ``vocab_multiple`` adds), each the mean
of the checkpoint's real rows: a new token starts as the average token, neither favoured nor
ruled out by the head, instead of as noise of the init's scale.
"""

from __future__ import annotations

import torch

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

TABLES = ("wte.weight", "lm_head.weight")  # (padded_vocab, d_model) each


def weights_start_reason(ckpt: dict, data_format: str) -> str | None:
    """Why ``ckpt`` starts a fine-tune under a config of ``data_format``, or None (a resume)."""
    saved = (ckpt.get("datamodule_hyper_parameters") or {}).get("format", "text")
    if saved == data_format:
        return None
    return f"it was trained on data.format {saved}, this config's is {data_format}"


def check_tokenizer_extends(ckpt: dict, path: str, tokenizer: str) -> None:
    """The config's tokenizer must be the checkpoint's, or it plus added tokens (``+chat``):
    another vocabulary would give the trained rows other meanings."""
    saved = (ckpt.get("datamodule_hyper_parameters") or {}).get("tokenizer")
    if saved is None:
        return
    mine, theirs = load_tokenizer(tokenizer).identity, load_tokenizer(saved).identity
    if mine == theirs or mine.startswith(theirs + "+"):
        return
    raise UserError(
        f"data.tokenizer {tokenizer!r} is not checkpoint {path}'s {saved!r} (nor it with added "
        f"tokens, as {saved + '+chat'!r}): the model's rows mean that tokenizer's ids"
    )


def grow_vocabulary(weights: dict[str, torch.Tensor], old_vocab: int, gpt) -> dict:
    """``weights`` (a GPT state dict) with its embedding and head rows from ``old_vocab`` on
    set to the mean of rows ``[0, old_vocab)``, at the shape of ``gpt``'s tables."""
    if gpt.vocab_size <= old_vocab:
        return weights
    grown = dict(weights)
    for key in TABLES:
        if key not in weights:
            continue
        old = weights[key]  # (old_padded, C)
        rows = gpt.state_dict()[key].shape[0]
        if old.dim() != 2 or old.shape[1] != gpt.state_dict()[key].shape[1]:
            continue  # another architecture: check_weights_fit names it
        new = old.new_empty(rows, old.shape[1])
        keep = min(old_vocab, rows)
        new[:keep] = old[:keep]
        new[keep:] = old[:old_vocab].float().mean(dim=0).to(old.dtype)
        grown[key] = new
    return grown


def vocab_of(ckpt: dict) -> int | None:
    """The checkpoint model's ``vocab_size``, from its saved model spec."""
    spec = (ckpt.get("hyper_parameters") or {}).get("gpt") or {}
    return (spec.get("init_args") or {}).get("vocab_size")
