"""The facts about a served checkpoint that ``GET /info`` and the chat page show: those of the
export's model card (``interop/model_card.py``), as JSON."""

from __future__ import annotations

from pathlib import Path

from lit_gpt_scratch.interop.hf_export import architecture
from lit_gpt_scratch.interop.model_card import training_facts
from lit_gpt_scratch.train.checkpoint_files import LoadedGPT, read_checkpoint


def served_card(ckpt_path: str | Path, loaded: LoadedGPT, tok, chat: bool) -> dict:
    """Architecture, parameters, tokenizer, whether it has the chat tokens, and what the
    checkpoint and its run folder record of training (steps, tokens seen, val loss and bpb)."""
    facts = architecture(loaded.gpt, type(loaded.gpt).__name__)
    facts.pop("notes")  # they are about reading the model in transformers
    training = training_facts(read_checkpoint(ckpt_path), ckpt_path)  # load_gpt keeps none
    val = training["val"]
    return {
        **facts,
        "vocab_size": loaded.gpt.vocab_size,
        "tokenizer": tok.spec,
        "chat": chat,
        "steps": training["steps"],
        "tokens_seen": training["tokens_seen"],
        "val_loss": round(val["loss"], 4) if "loss" in val else None,
        "val_bpb": round(val["bpb"], 4) if "bpb" in val else None,
    }
