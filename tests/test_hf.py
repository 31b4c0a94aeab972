"""Hugging Face parity, both ways: logits within 1e-4 in fp32 and the same greedy tokens.

Every transformers model is built and randomly initialised here: nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.interop.hf import gpt_from_hf, hf_from_gpt, load_hf_dir
from lit_gpt_scratch.model.attention import CausalSelfAttention
from lit_gpt_scratch.model.generate import generate
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.model.mlp import ReluSquaredMLP, SwiGLU
from lit_gpt_scratch.model.norm import LayerNorm, RMSNorm
from lit_gpt_scratch.model.position import NoPosition, RotaryPosition

transformers = pytest.importorskip("transformers")
V, T = 97, 24


def hf_gpt2(tied=True):
    config = transformers.GPT2Config(
        n_layer=2,
        n_head=4,
        n_embd=32,
        vocab_size=V,
        n_positions=T,
        tie_word_embeddings=tied,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return randomized(transformers.GPT2LMHeadModel(config))


def hf_llama(tied=True, bias=False):
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=V,
        max_position_embeddings=T,
        rope_theta=500.0,
        tie_word_embeddings=tied,
        attention_bias=bias,
        mlp_bias=bias,
        rms_norm_eps=1e-5,
    )
    return randomized(transformers.LlamaForCausalLM(config))


def randomized(model, seed: int = 0):
    """Non-trivial weights everywhere, norms and biases included, so no mapping hides.
    Works on ours and on transformers models alike."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 1.0)
    return model.eval()


def hf_logits(model, idx):
    with torch.no_grad():
        return model(idx).logits


def assert_same_function(ours: GPT, theirs):
    idx = torch.randint(0, V, (3, T))
    ours.eval()
    with torch.no_grad():
        mine, _ = ours(idx)
    assert torch.allclose(mine, hf_logits(theirs, idx), atol=1e-4, rtol=0)
    prompts = [[1, 2, 3, 4], [5, 6], [7]]
    want = theirs.generate(
        torch.tensor([prompts[0]]), max_new_tokens=8, do_sample=False, pad_token_id=0
    )[0, 4:].tolist()
    assert generate(ours, prompts[:1], 8, temperature=0) == [want]


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_from_hf(tied):
    theirs = hf_gpt2(tied)
    ours, spec = gpt_from_hf(theirs)
    assert spec["init_args"]["position"]["class_path"].endswith("LearnedPosition")
    assert (ours.lm_head.weight is ours.wte.weight) == tied
    assert_same_function(ours, theirs)


@pytest.mark.parametrize(("tied", "bias"), [(True, False), (False, True)])
def test_llama_from_hf(tied, bias):
    theirs = hf_llama(tied, bias)
    ours, spec = gpt_from_hf(theirs)
    assert spec["init_args"]["attention"]["init_args"]["n_kv_head"] == 2
    assert spec["init_args"]["position"]["init_args"]["base"] == 500.0
    assert_same_function(ours, theirs)


def test_gpt2_to_hf_with_vocab_padding_and_no_biases():
    ours = randomized(
        GPT(
            vocab_size=V,
            block_size=T,
            n_layer=2,
            n_head=4,
            d_model=32,
            vocab_multiple=64,
            norm=lambda d: LayerNorm(d, bias=False),
        )
    )
    theirs = hf_from_gpt(ours)
    assert isinstance(theirs, transformers.GPT2LMHeadModel)
    assert theirs.transformer.wte.weight.shape == (V, 32)  # padding rows dropped
    assert_same_function(ours, theirs)


def test_llama_to_hf_with_gqa_and_untied_head():
    ours = randomized(
        GPT(
            vocab_size=V,
            block_size=T,
            n_layer=2,
            n_head=4,
            d_model=32,
            tie_embeddings=False,
            attention=lambda *s: CausalSelfAttention(*s, n_kv_head=2, bias=False),
            mlp=lambda d: SwiGLU(d, hidden=48),
            norm=RMSNorm,
            position=lambda *s: RotaryPosition(*s, base=500.0),
        )
    )
    theirs = hf_from_gpt(ours)
    assert isinstance(theirs, transformers.LlamaForCausalLM)
    assert_same_function(ours, theirs)


def modern_llama(norm_eps: float = 1e-6, bias: bool = True) -> GPT:
    return GPT(
        vocab_size=V,
        block_size=T,
        n_layer=2,
        n_head=4,
        d_model=32,
        tie_embeddings=False,
        attention=lambda *s: CausalSelfAttention(*s, n_kv_head=2, qk_norm=True, bias=bias),
        mlp=lambda d: SwiGLU(d, hidden=48),
        norm=lambda d: RMSNorm(d, eps=norm_eps),
        position=lambda *s: RotaryPosition(*s, base=500.0),
    )


def test_qk_norm_exports_as_qwen3_with_the_tokenizer_ids():
    ours = randomized(modern_llama())
    theirs = hf_from_gpt(ours, eot_id=7)
    assert isinstance(theirs, transformers.Qwen3ForCausalLM)
    assert theirs.config.eos_token_id == theirs.config.bos_token_id == 7
    assert_same_function(ours, theirs)


def test_qk_norm_with_another_norm_eps_is_refused_naming_both():
    with pytest.raises(UserError, match=r"norm RMSNorm eps 1e-05 differs from the QK-norm's 1e-06"):
        hf_from_gpt(modern_llama(norm_eps=1e-5))


def test_round_trip_through_a_saved_directory(tmp_path):
    theirs = hf_gpt2()
    theirs.save_pretrained(tmp_path / "hf")
    ours, _ = gpt_from_hf(load_hf_dir(tmp_path / "hf"))
    hf_from_gpt(ours).save_pretrained(tmp_path / "back")
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    idx = torch.randint(0, V, (2, T))
    assert torch.allclose(hf_logits(again, idx), hf_logits(theirs, idx), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"position": NoPosition}, r"position NoPosition has no Hugging Face equivalent"),
        ({"mlp": ReluSquaredMLP}, r"mlp ReluSquaredMLP has no Hugging Face equivalent"),
        (
            {"attention": lambda *s: CausalSelfAttention(*s, window=4)},
            r"attention CausalSelfAttention with a sliding window",
        ),
        (
            {"attention": lambda *s: CausalSelfAttention(*s, qk_norm=True)},
            r"attention CausalSelfAttention with QK-norm",
        ),
        (
            {"attention": lambda *s: CausalSelfAttention(*s, n_kv_head=2)},
            r"attention CausalSelfAttention with grouped-query attention",
        ),
        ({"position": RotaryPosition}, r"mlp GeluMLP has no Hugging Face equivalent"),
        ({"logit_softcap": 15.0}, r"gpt GPT with logit_softcap has no Hugging Face equivalent"),
    ],
)
def test_unexpressible_models_name_the_blocking_component(kwargs, message):
    model = GPT(vocab_size=V, block_size=T, n_layer=1, n_head=4, d_model=32, **kwargs)
    with pytest.raises(UserError, match=message):
        hf_from_gpt(model)


def test_missing_hf_dir_is_named(tmp_path):
    with pytest.raises(UserError, match=r"--hf_dir .*nothing: no config.json"):
        load_hf_dir(tmp_path / "nothing")


def test_a_document_mask_model_exports_exactly_for_one_document_contexts():
    """The mask changes nothing in a context whose only <|endoftext|> is its first token (a
    chat conversation): transformers, which has no mask, computes the same logits there."""
    eot = V - 1
    ours = randomized(
        GPT(vocab_size=V, block_size=T, n_layer=2, n_head=4, d_model=32, document_mask=True,
            eot_id=eot)
    )  # fmt: skip
    theirs = hf_from_gpt(ours, eot_id=eot)
    idx = torch.randint(0, V - 1, (3, T))  # no EOT inside
    idx[:2, 0] = eot  # two rows begin with one, as a rendered conversation does
    with torch.no_grad():
        mine, _ = ours(idx)
    assert torch.allclose(mine, hf_logits(theirs, idx), atol=1e-4, rtol=0)
    idx[2, T // 2] = eot  # a second document: the masked model reads it alone, HF does not
    with torch.no_grad():
        mine, _ = ours(idx)
    assert not torch.allclose(mine[2], hf_logits(theirs, idx)[2], atol=1e-4, rtol=0)
