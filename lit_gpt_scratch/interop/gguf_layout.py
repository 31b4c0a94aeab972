"""A GPT as llama.cpp's GGUF architectures name it: the hyper-parameters and the tensors.

- GPT-2 layout (learned positions, LayerNorm, GELU MLP) -> ``gpt2``: one fused ``attn_qkv``
  per block, as ours is, and every bias (missing ones are written as zeros, the same function).
- Llama layout (rotary positions, RMSNorm, SwiGLU, grouped-query attention allowed) -> ``llama``:
  ``attn_q``/``attn_k``/``attn_v`` split out of our fused projection, biases where we have them.

Weights keep PyTorch's (out, in) layout, which is what GGUF stores (its dims are listed the
other way round). Rotary positions: ours rotate each (i, i + hs/2) pair of a head ("rotate half",
as Hugging Face), llama.cpp's ``llama`` rotates adjacent (2i, 2i + 1) pairs with the same
frequency for pair i; so each head's query and key rows (and biases) are reordered to
0, hs/2, 1, hs/2 + 1, ..., the same scores since q and k move alike.

What neither expresses is refused in one line naming the plug-in. A document-mask model
exports without its mask: llama.cpp reads a context as one document, the same function for a
context with no ``<|endoftext|>`` after its first token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.interop.refusals import or_zeros, refuse_unless
from lit_gpt_scratch.model.attention import CausalSelfAttention
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.model.mlp import GeluMLP, SwiGLU
from lit_gpt_scratch.model.norm import LayerNorm, RMSNorm
from lit_gpt_scratch.model.position import LearnedPosition, RotaryPosition

# a plug-in this format cannot express: one line naming it
_require = functools.partial(
    refuse_unless, what="export to GGUF", target="llama.cpp equivalent (gpt2 or llama architecture)"
)


@dataclass
class GGUFLayout:
    """``arch``: llama.cpp's architecture name; ``hparams``: its keys without the ``<arch>.``
    prefix (ints are uint32 and floats float32 in the file); ``tensors``: GGUF name -> tensor."""

    arch: str
    hparams: dict[str, int | float]
    tensors: dict[str, torch.Tensor]


def gguf_layout(model: GPT) -> GGUFLayout:
    """The GGUF form of ``model``, or a UserError naming the plug-in no architecture has."""
    block = model.blocks[0]
    attn, mlp, norm, position = block.attn, block.mlp, block.ln_1, model.position
    _require(isinstance(attn, CausalSelfAttention), "attention", attn)
    _require(model.logit_softcap is None, "gpt", model, "logit_softcap")
    _require(attn.window is None, "attention", attn, "a sliding window")
    _require(attn.q_norm is None, "attention", attn, "QK-norm")
    hparams = {
        "context_length": model.block_size,
        "embedding_length": model.wte.embedding_dim,
        "block_count": model.n_layer,
        "attention.head_count": attn.n_head,
        "attention.head_count_kv": attn.n_kv_head,
    }
    if isinstance(position, LearnedPosition):
        _require(isinstance(mlp, GeluMLP), "mlp", mlp, "GPT-2 layout")
        _require(isinstance(norm, LayerNorm), "norm", norm, "GPT-2 layout")
        hparams["feed_forward_length"] = mlp.c_fc.out_features
        hparams["attention.layer_norm_epsilon"] = norm.eps
        return GGUFLayout("gpt2", hparams, _gpt2_tensors(model))
    if isinstance(position, RotaryPosition):
        _require(isinstance(mlp, SwiGLU), "mlp", mlp, "Llama layout")
        _require(isinstance(norm, RMSNorm), "norm", norm, "Llama layout")
        hparams["feed_forward_length"] = mlp.up.out_features
        hparams["attention.layer_norm_rms_epsilon"] = norm.eps
        hparams["rope.freq_base"] = float(position.base)
        hparams["rope.dimension_count"] = attn.head_size
        hparams["vocab_size"] = model.vocab_size
        return GGUFLayout("llama", hparams, _llama_tensors(model))
    raise UserError(
        f"cannot export to GGUF: position {type(position).__name__} has no llama.cpp "
        "equivalent (gpt2 needs LearnedPosition, llama RotaryPosition)"
    )


def _head_tensors(model: GPT, out: dict) -> None:
    """The embedding, final norm and (untied) head: the rows of the tokenizer's ids only."""
    V = model.vocab_size
    out["token_embd.weight"] = model.wte.weight[:V].detach()  # (V, C)
    out["output_norm.weight"] = model.ln_f.weight.detach()
    if model.lm_head.weight is not model.wte.weight:  # tied: llama.cpp reuses token_embd
        out["output.weight"] = model.lm_head.weight[:V].detach()


def _gpt2_tensors(model: GPT) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    _head_tensors(model, out)
    C = model.wte.embedding_dim
    out["output_norm.bias"] = or_zeros(model.ln_f.bias, C)
    out["position_embd.weight"] = model.position.wpe.weight.detach()  # (block_size, C)
    for i, block in enumerate(model.blocks):
        b = f"blk.{i}."
        for name, norm in (("attn_norm", block.ln_1), ("ffn_norm", block.ln_2)):
            out[b + name + ".weight"] = norm.weight.detach()
            out[b + name + ".bias"] = or_zeros(norm.bias, C)
        for name, linear in (
            ("attn_qkv", block.attn.c_attn),  # (q heads, k heads, v heads) rows, as llama.cpp
            ("attn_output", block.attn.c_proj),
            ("ffn_up", block.mlp.c_fc),
            ("ffn_down", block.mlp.c_proj),
        ):
            out[b + name + ".weight"] = linear.weight.detach()
            out[b + name + ".bias"] = or_zeros(linear.bias, linear.out_features)
    return out


def interleaved_rope_rows(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Query or key rows (or biases) of ``n_head`` heads, each head's reordered from "rotate
    half" pairs (i, i + hs/2) to adjacent pairs (2i, 2i + 1). (n_head * hs, ...) -> same."""
    hs = weight.size(0) // n_head
    rest = weight.shape[1:]
    return weight.reshape(n_head, 2, hs // 2, *rest).transpose(1, 2).reshape(weight.shape)


def _llama_tensors(model: GPT) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    _head_tensors(model, out)
    for i, block in enumerate(model.blocks):
        b, attn = f"blk.{i}.", block.attn
        out[b + "attn_norm.weight"] = block.ln_1.weight.detach()
        out[b + "ffn_norm.weight"] = block.ln_2.weight.detach()
        hs = attn.head_size
        sizes = [attn.n_head * hs, attn.n_kv_head * hs, attn.n_kv_head * hs]
        heads = (attn.n_head, attn.n_kv_head, None)  # v is not rotated
        parts = [("weight", attn.c_attn.weight)]
        if attn.c_attn.bias is not None:
            parts.append(("bias", attn.c_attn.bias))
        for kind, tensor in parts:
            for p, rows, n in zip("qkv", tensor.detach().split(sizes), heads, strict=True):
                out[b + f"attn_{p}.{kind}"] = interleaved_rope_rows(rows, n) if n else rows
        out[b + "attn_output.weight"] = attn.c_proj.weight.detach()
        if attn.c_proj.bias is not None:
            out[b + "attn_output.bias"] = attn.c_proj.bias.detach()
        for ours, theirs in (("gate", "ffn_gate"), ("up", "ffn_up"), ("c_proj", "ffn_down")):
            linear = getattr(block.mlp, ours)
            out[b + theirs + ".weight"] = linear.weight.detach()
            if linear.bias is not None:
                out[b + theirs + ".bias"] = linear.bias.detach()
    return out
