"""Two-way weight conversion with Hugging Face transformers (the ``hf`` extra).

- GPT-2 layout (learned positions, LayerNorm, GELU MLP) <-> ``GPT2LMHeadModel``.
- Llama layout (rotary positions, RMSNorm, SwiGLU, grouped-query attention allowed) <->
  ``LlamaForCausalLM``.
- The Llama layout with QK-norm (an RMSNorm of each head's queries and keys, before the
  rotation) -> ``Qwen3ForCausalLM``, whose attention is exactly that; it has one ``eps`` for
  every norm, so the model's norms must use the QK-norm's 1e-6.

A model that none expresses (a sliding window, ReLU², a logit soft-cap, a document mask, no
positions, ...) is refused with a ``UserError`` naming the component that blocks it. Missing
biases export as zeros, which computes the same function. Nothing here downloads: directories
are read with ``local_files_only=True``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from lit_gpt_scratch.errors import UserError, one_line
from lit_gpt_scratch.interop.refusals import or_zeros, refuse_unless
from lit_gpt_scratch.model.attention import CausalSelfAttention
from lit_gpt_scratch.model.build import build_gpt
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.model.mlp import GeluMLP, SwiGLU
from lit_gpt_scratch.model.norm import LayerNorm, RMSNorm
from lit_gpt_scratch.model.position import LearnedPosition, RotaryPosition

# a plug-in this format cannot express: one line naming it
_require = functools.partial(
    refuse_unless, what="export", target="Hugging Face equivalent (GPT-2, Llama or Qwen3 layout)"
)

MODEL = "lit_gpt_scratch.model"


def _plugin(name: str, **init_args) -> dict:
    return {"class_path": f"{MODEL}.{name}", "init_args": init_args}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError(
            "Hugging Face interop needs transformers: pip install 'lit-gpt-scratch[hf]'"
        ) from None
    return transformers


# --- Hugging Face -> GPT --------------------------------------------------------------------------


def load_hf_dir(hf_dir: str | Path):
    """A causal LM from a local ``save_pretrained`` directory (config.json + weights)."""
    transformers = _transformers()
    path = Path(hf_dir)
    if not (path / "config.json").is_file():
        raise UserError(f"--hf_dir {hf_dir}: no config.json (expected a save_pretrained directory)")
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, torch_dtype=torch.float32
        )
    except Exception as e:
        reason = one_line(e)
        raise UserError(f"--hf_dir {hf_dir}: transformers cannot load it ({reason})") from None


def spec_from_hf(config) -> dict:
    """The ``model.gpt`` YAML section that builds this Hugging Face architecture."""
    kind = config.model_type
    if kind == "gpt2":
        if config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise UserError(f"GPT-2 activation {config.activation_function!r} is not supported")
        d = config.n_embd
        args = {
            "vocab_size": config.vocab_size,
            "block_size": config.n_positions,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "d_model": d,
            "attention": _plugin("attention.CausalSelfAttention", bias=True),
            "mlp": _plugin("mlp.GeluMLP", hidden=config.n_inner or 4 * d, bias=True),
            "norm": _plugin("norm.LayerNorm", bias=True, eps=config.layer_norm_epsilon),
            "position": _plugin("position.LearnedPosition"),
            "tie_embeddings": bool(config.tie_word_embeddings),
        }
    elif kind == "llama":
        d, heads = config.hidden_size, config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or d // heads
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
        if head_dim * heads != d:
            raise UserError(f"Llama head_dim {head_dim} x {heads} heads != hidden_size {d}")
        if rope and rope.get("rope_type", "default") != "default":
            raise UserError(f"Llama rope scaling {rope.get('rope_type')!r} is not supported")
        if config.hidden_act != "silu":
            raise UserError(f"Llama activation {config.hidden_act!r} is not supported")
        args = {
            "vocab_size": config.vocab_size,
            "block_size": config.max_position_embeddings,
            "n_layer": config.num_hidden_layers,
            "n_head": heads,
            "d_model": d,
            "attention": _plugin(
                "attention.CausalSelfAttention",
                n_kv_head=config.num_key_value_heads,
                bias=bool(config.attention_bias),
            ),
            "mlp": _plugin(
                "mlp.SwiGLU", hidden=config.intermediate_size, bias=bool(config.mlp_bias)
            ),
            "norm": _plugin("norm.RMSNorm", eps=config.rms_norm_eps),
            "position": _plugin("position.RotaryPosition", base=_rope_theta(config)),
            "tie_embeddings": bool(config.tie_word_embeddings),
        }
    else:
        raise UserError(f"Hugging Face model_type {kind!r}: only gpt2 and llama are supported")
    return {"class_path": f"{MODEL}.gpt.GPT", "init_args": args}


def gpt_from_hf(hf_model) -> tuple[GPT, dict]:
    """Our GPT with the weights of ``hf_model``, and the YAML spec that rebuilds it."""
    spec = spec_from_hf(hf_model.config)
    model = build_gpt(spec)
    ours = _to_ours(hf_model.config.model_type, hf_model.state_dict(), model)
    for key in ("wte.weight", "lm_head.weight"):  # vocab_multiple's rows: never used, zeros
        if key in ours:
            ours[key] = _pad_rows(ours[key], model.padded_vocab_size)
    missing, unexpected = model.load_state_dict(ours, strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not model_is_tied(model)]
    if missing or unexpected:
        raise UserError(f"weights do not map: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model, spec


def _pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    missing = rows - weight.size(0)
    return torch.cat([weight, weight.new_zeros(missing, weight.size(1))]) if missing else weight


def model_is_tied(model: GPT) -> bool:
    return model.lm_head.weight is model.wte.weight


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None)
    if rope and "rope_theta" in rope:
        return float(rope["rope_theta"])
    return float(config.rope_theta)


GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _to_ours(kind: str, hf: dict, model: GPT) -> dict:
    out = {}
    if kind == "gpt2":  # the same names under another prefix; Conv1D weights are (in, out)
        for key in model.state_dict():
            if key.startswith("blocks."):
                _, i, rest = key.split(".", 2)
                theirs = hf[f"transformer.h.{i}.{rest}"]
                out[key] = theirs.t() if rest in GPT2_CONV1D else theirs
        out["wte.weight"] = hf["transformer.wte.weight"]
        out["position.wpe.weight"] = hf["transformer.wpe.weight"]
        out["ln_f.weight"] = hf["transformer.ln_f.weight"]
        out["ln_f.bias"] = hf["transformer.ln_f.bias"]
        if not model_is_tied(model):
            out["lm_head.weight"] = hf["lm_head.weight"]
        return out
    out["wte.weight"] = hf["model.embed_tokens.weight"]
    out["ln_f.weight"] = hf["model.norm.weight"]
    for i, block in enumerate(model.blocks):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        out[b + "ln_1.weight"] = hf[h + "input_layernorm.weight"]
        out[b + "ln_2.weight"] = hf[h + "post_attention_layernorm.weight"]
        qkv = [h + f"self_attn.{p}_proj." for p in "qkv"]
        out[b + "attn.c_attn.weight"] = torch.cat([hf[k + "weight"] for k in qkv])
        out[b + "attn.c_proj.weight"] = hf[h + "self_attn.o_proj.weight"]
        if block.attn.c_attn.bias is not None:
            out[b + "attn.c_attn.bias"] = torch.cat([hf[k + "bias"] for k in qkv])
            out[b + "attn.c_proj.bias"] = hf[h + "self_attn.o_proj.bias"]
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("c_proj", "down_proj")):
            for kind_ in ("weight", "bias"):
                if h + f"mlp.{theirs}.{kind_}" in hf:
                    out[b + f"mlp.{ours}.{kind_}"] = hf[h + f"mlp.{theirs}.{kind_}"]
    if not model_is_tied(model):
        out["lm_head.weight"] = hf["lm_head.weight"]
    return out


# --- GPT -> Hugging Face --------------------------------------------------------------------------


def hf_from_gpt(model: GPT, eot_id: int | None = None):
    """A transformers model computing the same function as ``model`` (fp32 weights copied).
    ``eot_id``: the tokenizer's end-of-text id, the config's bos, eos and pad token (None:
    none set, never GPT-2's 50256 for another vocabulary)."""
    transformers = _transformers()
    block = model.blocks[0]
    attn, mlp, norm, position = block.attn, block.mlp, block.ln_1, model.position
    _require(isinstance(attn, CausalSelfAttention), "attention", attn)
    _require(model.logit_softcap is None, "gpt", model, "logit_softcap")
    # document_mask: transformers reads a context as one document, which is the same function
    # for a context with no <|endoftext|> after its first token (one chat, one document).
    _require(attn.window is None, "attention", attn, "a sliding window")
    d, V = model.wte.embedding_dim, model.vocab_size
    common = dict(vocab_size=V, tie_word_embeddings=model_is_tied(model))
    common.update(bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id)
    qk_norm = attn.q_norm is not None
    if isinstance(position, LearnedPosition):
        _require(not qk_norm, "attention", attn, "QK-norm")
        _require(attn.n_kv_head == attn.n_head, "attention", attn, "grouped-query attention")
        _require(isinstance(mlp, GeluMLP), "mlp", mlp, "GPT-2 layout")
        _require(isinstance(norm, LayerNorm), "norm", norm, "GPT-2 layout")
        config = transformers.GPT2Config(
            n_embd=d,
            n_layer=model.n_layer,
            n_head=attn.n_head,
            n_positions=model.block_size,
            n_inner=mlp.c_fc.out_features,
            activation_function="gelu_new",
            layer_norm_epsilon=norm.eps,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
        hf = transformers.GPT2LMHeadModel(config)
        state = _gpt2_state(model)
    elif isinstance(position, RotaryPosition):
        _require(isinstance(mlp, SwiGLU), "mlp", mlp, "Llama layout")
        _require(isinstance(norm, RMSNorm), "norm", norm, "Llama layout")
        if qk_norm:
            _require(mlp.up.bias is None, "mlp", mlp, "biases next to QK-norm (Qwen3 has none)")
            if norm.eps != attn.q_norm.eps:
                raise UserError(
                    f"cannot export: norm RMSNorm eps {norm.eps} differs from the QK-norm's "
                    f"{attn.q_norm.eps}, and Qwen3 (the Llama layout with QK-norm) has one eps"
                )
        layout = transformers.Qwen3Config if qk_norm else transformers.LlamaConfig
        extra = {"head_dim": attn.head_size} if qk_norm else {"mlp_bias": mlp.up.bias is not None}
        config = layout(
            hidden_size=d,
            intermediate_size=mlp.up.out_features,
            num_hidden_layers=model.n_layer,
            num_attention_heads=attn.n_head,
            num_key_value_heads=attn.n_kv_head,
            max_position_embeddings=model.block_size,
            rms_norm_eps=norm.eps,
            rope_theta=position.base,
            attention_bias=attn.c_attn.bias is not None,
            **extra,
            **common,
        )
        causal_lm = transformers.Qwen3ForCausalLM if qk_norm else transformers.LlamaForCausalLM
        hf = causal_lm(config)
        state = _llama_state(model)
    else:
        raise UserError(
            f"cannot export: position {type(position).__name__} has no Hugging Face equivalent "
            "(GPT-2 needs LearnedPosition, Llama RotaryPosition)"
        )
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model_is_tied(model))]
    if missing or unexpected:
        raise UserError(f"cannot export: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return hf.eval()


def _gpt2_state(model: GPT) -> dict:
    V = model.vocab_size
    out = {
        "transformer.wte.weight": model.wte.weight[:V].detach(),
        "transformer.wpe.weight": model.position.wpe.weight.detach(),
        "transformer.ln_f.weight": model.ln_f.weight.detach(),
        "transformer.ln_f.bias": or_zeros(model.ln_f.bias, model.ln_f.weight.numel()),
    }
    for i, block in enumerate(model.blocks):
        h = f"transformer.h.{i}."
        for name, norm in (("ln_1", block.ln_1), ("ln_2", block.ln_2)):
            out[h + name + ".weight"] = norm.weight.detach()
            out[h + name + ".bias"] = or_zeros(norm.bias, norm.weight.numel())
        for name, linear in (
            ("attn.c_attn", block.attn.c_attn),
            ("attn.c_proj", block.attn.c_proj),
            ("mlp.c_fc", block.mlp.c_fc),
            ("mlp.c_proj", block.mlp.c_proj),
        ):
            out[h + name + ".weight"] = linear.weight.detach().t()  # Conv1D stores (in, out)
            out[h + name + ".bias"] = or_zeros(linear.bias, linear.out_features)
    if not model_is_tied(model):
        out["lm_head.weight"] = model.lm_head.weight[:V].detach()
    return out


def _llama_state(model: GPT) -> dict:
    V = model.vocab_size
    out = {"model.embed_tokens.weight": model.wte.weight[:V].detach()}
    out["model.norm.weight"] = model.ln_f.weight.detach()
    for i, block in enumerate(model.blocks):
        h, attn = f"model.layers.{i}.", block.attn
        out[h + "input_layernorm.weight"] = block.ln_1.weight.detach()
        out[h + "post_attention_layernorm.weight"] = block.ln_2.weight.detach()
        hs = attn.head_size
        sizes = [attn.n_head * hs, attn.n_kv_head * hs, attn.n_kv_head * hs]
        for p, w in zip("qkv", attn.c_attn.weight.detach().split(sizes), strict=True):
            out[h + f"self_attn.{p}_proj.weight"] = w
        out[h + "self_attn.o_proj.weight"] = attn.c_proj.weight.detach()
        if attn.q_norm is not None:  # Qwen3's per-head norms
            out[h + "self_attn.q_norm.weight"] = attn.q_norm.weight.detach()
            out[h + "self_attn.k_norm.weight"] = attn.k_norm.weight.detach()
        if attn.c_attn.bias is not None:
            for p, bias in zip("qkv", attn.c_attn.bias.detach().split(sizes), strict=True):
                out[h + f"self_attn.{p}_proj.bias"] = bias
            out[h + "self_attn.o_proj.bias"] = or_zeros(attn.c_proj.bias, attn.c_proj.out_features)
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("c_proj", "down_proj")):
            linear = getattr(block.mlp, ours)
            out[h + f"mlp.{theirs}.weight"] = linear.weight.detach()
            if linear.bias is not None:
                out[h + f"mlp.{theirs}.bias"] = linear.bias.detach()
    if not model_is_tied(model):
        out["lm_head.weight"] = model.lm_head.weight[:V].detach()
    return out
