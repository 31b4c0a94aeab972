"""MathAttention: the attention written out as softmax(q kᵀ / √d + mask) · v computes what
CausalSelfAttention (SDPA) computes, on the same weights, and exposes its attention weights."""

from __future__ import annotations

import pytest
import torch

from lit_gpt_scratch.model.attention import CausalSelfAttention, MathAttention
from lit_gpt_scratch.model.build import build_gpt
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.model.position import LearnedPosition, RotaryPosition

OPTIONS = {
    "plain": ({}, LearnedPosition),
    "gqa_rope": ({"n_kv_head": 2}, RotaryPosition),
    "qk_norm_window": ({"qk_norm": True, "window": 5, "bias": False}, RotaryPosition),
}


def pair(options: dict, position, seed: int = 0) -> tuple[GPT, GPT]:
    """Two float64 GPTs with the same weights: one on SDPA, one on the math attention."""
    shape = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, d_model=32, init_std=0.3)
    torch.manual_seed(seed)
    sdpa = GPT(**shape, position=position,
               attention=lambda *s: CausalSelfAttention(*s, **options)).double().eval()  # fmt: skip
    math = GPT(**shape, position=position,
               attention=lambda *s: MathAttention(*s, **options)).double().eval()  # fmt: skip
    math.load_state_dict(sdpa.state_dict())
    return sdpa, math


@pytest.mark.parametrize("name", OPTIONS)
def test_math_attention_equals_sdpa_on_the_same_weights(name):
    sdpa, math = pair(*OPTIONS[name])
    idx = torch.randint(0, 97, (3, 20))
    want, _ = sdpa(idx)
    got, _ = math(idx)
    assert torch.allclose(got, want, rtol=0, atol=1e-10)
    # left padding: pad_mask reaches the same mask
    pad_mask = torch.ones(3, 20, dtype=torch.bool)
    pad_mask[1, :4] = False
    pos = (torch.arange(20) - 4).clamp(min=0).expand(3, 20).clone()
    pos[0], pos[2] = torch.arange(20), torch.arange(20)
    want, _ = sdpa(idx, pos=pos, pad_mask=pad_mask)
    got, _ = math(idx, pos=pos, pad_mask=pad_mask)
    assert torch.allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", OPTIONS)
def test_math_attention_with_a_kv_cache_equals_sdpa_and_its_own_full_forward(name):
    sdpa, math = pair(*OPTIONS[name])
    idx = torch.randint(0, 97, (2, 14))
    full, _ = math(idx)
    runs = []
    for model in (sdpa, math):
        caches = model.new_caches(2, 14)
        first, _ = model(idx[:, :6], caches=caches)  # a prefill, then one token at a time
        steps = [model(idx[:, t : t + 1], caches=caches)[0] for t in range(6, 14)]
        runs.append(torch.cat([first, *steps], dim=1))
    assert torch.allclose(runs[1], runs[0], rtol=0, atol=1e-10)
    assert torch.allclose(runs[1], full, rtol=0, atol=1e-10)


def test_kept_weights_are_causal_rows_that_sum_to_one():
    _, math = pair({}, LearnedPosition)
    for block in math.blocks:
        block.attn.keep_weights = True
    math(torch.randint(0, 97, (2, 16)))
    weights = math.blocks[1].attn.last_weights
    assert weights.shape == (2, 4, 16, 16)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, 16, dtype=weights.dtype))
    above = torch.ones(16, 16, dtype=torch.bool).triu(1)
    assert torch.equal(weights[..., above], torch.zeros_like(weights[..., above]))
    assert (weights[..., ~above] > 0).all()  # every earlier token gets some weight
    assert torch.equal(weights[..., 0, 0], torch.ones(2, 4, dtype=weights.dtype))


def test_without_the_mask_the_comparison_would_fail(monkeypatch):
    """The equality tests can fail: drop the causal mask and the math attention moves."""
    sdpa, math = pair({}, LearnedPosition)
    idx = torch.randint(0, 97, (2, 12))
    want, _ = sdpa(idx)
    see_everything = lambda self, T, T_keys, pad_mask, device, **_: torch.ones(  # noqa: E731
        1, 1, T, T_keys, dtype=torch.bool, device=device
    )
    monkeypatch.setattr(MathAttention, "_mask", see_everything)
    got, _ = math(idx)
    assert not torch.allclose(got, want, atol=1e-3)


def test_math_attention_is_chosen_from_yaml_by_class_path():
    spec = {
        "class_path": "lit_gpt_scratch.model.gpt.GPT",
        "init_args": {
            "vocab_size": 97, "block_size": 16, "n_layer": 1, "n_head": 2, "d_model": 16,
            "attention": {
                "class_path": "lit_gpt_scratch.model.attention.MathAttention",
                "init_args": {"n_kv_head": 1, "keep_weights": True},
            },
        },
    }  # fmt: skip
    model = build_gpt(spec).eval()
    attn = model.blocks[0].attn
    assert isinstance(attn, MathAttention) and attn.n_kv_head == 1 and attn.keep_weights
    model(torch.randint(0, 97, (1, 5)))
    assert attn.last_weights.shape == (1, 2, 5, 5)
