"""A complete Hugging Face directory from a checkpoint: weights and ``config.json`` (with the
tokenizer's own bos/eos/pad id), ``generation_config.json``, the tokenizer files and the model
card, so that ``AutoTokenizer`` and ``AutoModelForCausalLM`` load it and generate as
``generate`` does."""

from __future__ import annotations

from pathlib import Path

from lit_gpt_scratch.interop.hf import hf_from_gpt, model_is_tied
from lit_gpt_scratch.interop.hf_tokenizer import write_tokenizer_files
from lit_gpt_scratch.interop.model_card import model_card
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.tokenizer.chat_tokens import END, has_chat_tokens

# data/chat_template.py's rendering in Jinja: <|endoftext|>, then each message as its role
# token, its content and <|end|>; the generation prompt is <|assistant|>.
CHAT_TEMPLATE = (
    "{{ eos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('role must be system, user or assistant') }}{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def converted(gpt: GPT, tok):
    """The transformers model for ``gpt``, its token ids those of ``tok``, with the project's
    ``generate`` defaults as its generation config (top-k 200, temperature 0.8, 200 new
    tokens, stop at EOT)."""
    from transformers import GenerationConfig

    hf = hf_from_gpt(gpt, eot_id=tok.eot_id)
    stops = tok.eot_id  # a chat model ends its turn with <|end|>
    if has_chat_tokens(tok):
        stops = [tok.encoding._special_tokens[END], tok.eot_id]
    hf.generation_config = GenerationConfig(
        bos_token_id=tok.eot_id,
        eos_token_id=stops,
        pad_token_id=tok.eot_id,
        do_sample=True,
        temperature=0.8,
        top_k=200,
        max_new_tokens=200,
    )
    return hf


def write_export(
    directory: Path, name: str, hf, gpt: GPT, tok, training: dict, command: str,
    eval_results: dict | None = None,
) -> None:  # fmt: skip
    """Write ``hf`` (``converted(gpt, tok)``) and everything else into ``directory`` (an empty
    staging folder) for the export ``name``, the card's title; ``training``: the checkpoint's
    ``model_card.training_facts``."""
    hf.save_pretrained(directory)
    chat = CHAT_TEMPLATE if has_chat_tokens(tok) else None
    write_tokenizer_files(tok, directory, model_max_length=gpt.block_size, chat_template=chat)
    card = model_card(
        name,
        architecture(gpt, type(hf).__name__),
        {"spec": tok.spec, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id},
        training,
        command,
        eval_results,
    )
    (directory / "README.md").write_text(card, encoding="utf-8")


def architecture(gpt: GPT, hf_class: str) -> dict:
    """The facts of the card's architecture section."""
    block = gpt.blocks[0]
    attn = block.attn
    notes = []
    if attn.q_norm is not None:
        notes.append("QK-norm: RMSNorm of each head's queries and keys before the rotation")
    if gpt.document_mask:
        notes.append(
            "trained with a document mask (attention within documents, positions from each "
            "<|endoftext|>); transformers reads a context as one document, the same function "
            "for a context with no <|endoftext|> after its first token (one conversation): "
            "start a new context for each document"
        )
    return {
        "class": hf_class,
        "parameters": gpt.num_params(),
        "n_layer": gpt.n_layer,
        "d_model": gpt.wte.embedding_dim,
        "n_head": attn.n_head,
        "n_kv_head": attn.n_kv_head,
        "block_size": gpt.block_size,
        "attention": type(attn).__name__,
        "mlp": type(block.mlp).__name__,
        "norm": type(block.ln_1).__name__,
        "position": type(gpt.position).__name__,
        "tied": model_is_tied(gpt),
        "notes": notes,
    }
