"""The GPT and its plug-ins: configs, causality, init, tying, padding, KV cache, sampling."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lit_gpt_scratch.model.attention import CausalSelfAttention, MathAttention
from lit_gpt_scratch.model.build import build_gpt, gpt_spec_from_config
from lit_gpt_scratch.model.generate import generate, sample_next
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.model.mlp import GeluMLP, ReluSquaredMLP, SwiGLU
from lit_gpt_scratch.model.norm import LayerNorm, RMSNorm
from lit_gpt_scratch.model.position import LearnedPosition, NoPosition, RotaryPosition

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
PLUGINS = ("attention", "mlp", "norm", "position")
EXPECTED_PARAMS = {  # GPT-2's published sizes; tiny and llama are ours
    "124m": 124_439_808,
    "350m": 354_823_168,
    "774m": 774_030_080,
    "1558m": 1_557_611_200,
    "llama-124m": 123_551_232,
    # 12 x (768 x 2304 + 768 x 768 + 2 x 768 x 3072 + 2 x 768 + 2 x 64) + 2 x 50257 x 768 + 768
    "124m-modern": 162_150_144,
    "tiny": 1_350_400,
    "classify-tiny": 1_350_400,  # tiny's GPT, whose checkpoints start it (plus a head outside it)
    "sft-tiny": 1_350_912,  # tiny and the four chat tokens' rows: 4 x 128
    "dpo-tiny": 1_350_912,  # sft-tiny's model: DPO starts from an SFT checkpoint
    # 4 x (128 x 384 + 128 x 128 + 2 x 128 x 512 + 2 x 128 + 2 x 32) + 2 x 4096 x 128 + 128
    "tiny-modern": 1_836_416,
    # 4 x (128 x 384 + 128 x 128 + 2 x 128 x 512 + 2 x 128) + 257 x 128 + 64 x 128 + 128: no
    # biases, the 257 byte ids, tied
    "shakespeare-char": 828_672,
}


def gpt_section(config: Path) -> dict:
    return gpt_spec_from_config(config)


def factory(spec: dict):
    """A plug-in factory from a config's {class_path, init_args}, as jsonargparse binds it."""
    module, name = spec["class_path"].rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    options = spec.get("init_args") or {}
    return lambda *shape: cls(*shape, **options)


def small(seed=0, **plugins) -> GPT:
    torch.manual_seed(seed)
    defaults = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, d_model=32, init_std=0.3)
    return GPT(**{**defaults, **plugins}).eval()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_builds_with_its_parameter_count(config):
    model = build_gpt(gpt_section(config), device="meta")
    assert model.num_params() == EXPECTED_PARAMS[config.stem]


def test_124m_is_gpt2_small():
    model = build_gpt(gpt_section(CONFIGS[0].with_name("124m.yaml")), device="meta")
    assert (len(model.blocks), model.block_size, model.vocab_size) == (12, 1024, 50257)
    assert model.wte.weight.shape == (50304, 768)  # padded to a multiple of 64 by default
    assert model.num_params(padding=True) == 124_439_808 + 47 * 768
    block = model.blocks[0]
    assert isinstance(block.attn, CausalSelfAttention) and block.attn.n_head == 12
    assert isinstance(block.mlp, GeluMLP) and block.mlp.c_fc.out_features == 3072
    assert isinstance(block.ln_1, LayerNorm) and block.ln_1.bias is not None
    assert isinstance(model.position, LearnedPosition)
    assert model.lm_head.weight is model.wte.weight


def config_plugin_combinations() -> dict[str, dict]:
    """Every distinct (attention, mlp, norm, position) combination the configs use."""
    combos = {}
    for config in CONFIGS:
        args = gpt_section(config)["init_args"]
        combos[repr([args[p] for p in PLUGINS])] = {p: factory(args[p]) for p in PLUGINS}
    return combos


EXTRA_VARIANTS = {
    "gqa": {"attention": lambda *s: CausalSelfAttention(*s, n_kv_head=2)},
    "qk_norm": {"attention": lambda *s: CausalSelfAttention(*s, qk_norm=True, bias=False)},
    "window": {"attention": lambda *s: CausalSelfAttention(*s, window=4)},
    "nope": {"position": NoPosition},
    "rope_relu2": {"position": RotaryPosition, "mlp": ReluSquaredMLP, "norm": RMSNorm},
    "swiglu_untied": {"mlp": SwiGLU, "tie_embeddings": False},
    "math": {"attention": MathAttention},
    "math_gqa_rope": {
        "attention": lambda *s: MathAttention(*s, n_kv_head=2, qk_norm=True),
        "position": RotaryPosition,
    },
    "document_mask": {"document_mask": True, "eot_id": 5},
    "document_mask_math_rope": {
        "document_mask": True,
        "eot_id": 5,
        "attention": MathAttention,
        "position": RotaryPosition,
    },  # fmt: skip
}
VARIANTS = {**config_plugin_combinations(), **EXTRA_VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v[:40])
def test_causal_changing_a_token_never_changes_earlier_logits(variant):
    model = small(**VARIANTS[variant])
    idx = torch.randint(0, 97, (2, 20))
    logits, _ = model(idx)
    for t in (0, 7, 19):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 97
        new, _ = model(changed)
        assert torch.equal(new[:, :t], logits[:, :t]), f"position < {t} saw token {t}"
        assert not torch.allclose(new[:, t], logits[:, t])  # the test can fail: t itself moves


def test_sliding_window_limits_what_a_token_sees():
    model = small(attention=lambda *s: CausalSelfAttention(*s, window=4), n_layer=1)
    idx = torch.randint(0, 97, (1, 12))
    logits, _ = model(idx)
    changed = idx.clone()
    changed[0, 2] = (changed[0, 2] + 1) % 97
    new, _ = model(changed)
    assert torch.allclose(new[0, 6:], logits[0, 6:])  # positions 6.. see 3.. only (one layer)
    assert not torch.allclose(new[0, 5], logits[0, 5])  # position 5 sees 2..5


def test_init_statistics():
    torch.manual_seed(0)
    model = GPT(vocab_size=1000, block_size=64, n_layer=6, n_head=8, d_model=512)
    residual = 0.02 / math.sqrt(2 * 6)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(residual, rel=0.03), name
        elif name.endswith("ln_1.weight") or name.endswith("ln_f.weight"):
            assert torch.equal(p, torch.ones_like(p))
        elif name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        elif p.dim() == 2:
            assert p.mean().abs().item() < 1e-3 and p.std().item() == pytest.approx(0.02, rel=0.03)


def test_tied_and_untied_heads():
    tied, untied = small(), small(tie_embeddings=False)
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.lm_head.weight is not untied.wte.weight
    assert untied.num_params() - tied.num_params() == 97 * 32
    # padding: 128 - 97 rows in each table, counted only on request
    assert untied.num_params(padding=True) - untied.num_params() == 2 * 31 * 32


def test_flops_per_token_is_nanogpts_figure_for_gpt2_small():
    from lit_gpt_scratch.train.callbacks import flops_per_token

    model = build_gpt(gpt_section(CONFIGS[0].with_name("124m.yaml")), device="meta")
    # 6 * (124,475,904 weights with padding - 786,432 position rows) + 12*12*12*64*1024
    assert flops_per_token(model) == 855_383_040  # the "about 855 MFLOP"


def test_flops_per_token_counts_an_untied_input_embedding_as_a_lookup():
    """124m-modern has an untied head: its input embedding (50,304 x 768) is a lookup, not a
    matmul. Counting it as one gave 1,086.6 MFLOP per token and an MFU 27% too high."""
    from lit_gpt_scratch.train.callbacks import flops_per_token

    model = build_gpt(gpt_section(CONFIGS[0].with_name("124m-modern.yaml")), device="meta")
    # 6 * (162,222,336 weights with padding - 38,633,472 in wte) + 12*12*12*64*1024
    assert flops_per_token(model) == 854_779_392


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4e12),
        ("NVIDIA H100 PCIe", 756.0e12),  # a substring match gave the SXM figure
        ("NVIDIA H100 NVL", 835.5e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA GeForce RTX 4090", None),  # unlisted: no MFU rather than a guessed one
        ("NVIDIA L40", None),  # not an L40S, nor an L4
    ],
)
def test_the_peak_flops_table_matches_whole_device_names(monkeypatch, name, peak):
    from lit_gpt_scratch.train.callbacks import device_peak_flops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert device_peak_flops(torch.device("cuda", 0)) == peak
    assert device_peak_flops(torch.device("cpu")) is None


def test_vocab_padding_is_invisible_to_logits_loss_and_sampling():
    model = small()  # vocab_multiple 64 by default
    assert model.padded_vocab_size == 128 and model.wte.weight.shape == (128, 32)
    with torch.no_grad():
        model.lm_head.weight[97:] = 100.0  # padded rows that would win every argmax
    idx = torch.randint(0, 97, (2, 10))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 10, 97)
    assert loss.item() == pytest.approx(
        F.cross_entropy(logits.reshape(-1, 97), idx.reshape(-1)).item()
    )
    out = generate(model, [[1, 2, 3]], 10, temperature=1.0, seed=0)
    assert max(out[0]) < 97


def test_loss_is_fp32_cross_entropy_and_ignores_minus_100():
    model = small()
    idx = torch.randint(0, 97, (2, 10))
    targets = idx.roll(-1, dims=1)
    targets[:, -1] = -100
    logits, loss = model(idx, targets)
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 97), targets[:, :-1].reshape(-1))
    assert loss.dtype == torch.float32 and torch.allclose(loss, want)


def test_block_size_is_enforced():
    with pytest.raises(ValueError, match="sequence of 33 tokens exceeds block_size 32"):
        small()(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"prompt \(30 tokens\) \+ max_new_tokens \(5\) exceeds"):
        generate(small(), [[1] * 30], 5)


def test_rmsnorm_and_layernorm_match_references():
    x = torch.randn(3, 5, 16)
    rms = RMSNorm(16)
    torch.nn.init.normal_(rms.weight)
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * rms.weight
    assert torch.allclose(rms(x), want, atol=1e-6)
    ln, ref = LayerNorm(16), torch.nn.LayerNorm(16)
    assert torch.allclose(ln(x), ref(x), atol=1e-6)
    assert LayerNorm(16, bias=False).bias is None


def test_rotary_scores_depend_only_on_relative_position():
    rope = RotaryPosition(d_model=64, n_head=4, block_size=64)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        rq, _ = rope.rotate(q, q, torch.tensor([m]))
        _, rk = rope.rotate(k, k, torch.tensor([n]))
        return (rq * rk).sum().item()

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-4)


KV_VARIANTS = {
    "learned": {},
    "rotary": {"position": RotaryPosition},
    "none": {"position": NoPosition},
    "gqa_qknorm_window": {
        "position": RotaryPosition,
        "attention": lambda *s: CausalSelfAttention(*s, n_kv_head=2, qk_norm=True, window=5),
    },
    "math_gqa_rope": {
        "position": RotaryPosition,
        "attention": lambda *s: MathAttention(*s, n_kv_head=2),
    },
}


@pytest.mark.parametrize("variant", KV_VARIANTS)
def test_cached_and_uncached_decoding_agree(variant):
    model = small(**KV_VARIANTS[variant])
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13]]
    greedy = generate(model, prompts, 16, temperature=0)
    assert greedy == generate(model, prompts, 16, temperature=0, use_cache=False)
    assert greedy == [generate(model, [p], 16, temperature=0)[0] for p in prompts]  # batching
    assert len({tuple(g) for g in greedy}) == 3  # the prompts lead to different continuations
    kw = dict(temperature=0.8, top_k=20, top_p=0.95, seed=1)
    sampled = generate(model, prompts, 16, **kw)
    assert sampled == generate(model, prompts, 16, use_cache=False, **kw)
    assert all(len(set(s)) > 4 for s in sampled)  # varied tokens: a real comparison


def test_incremental_logits_equal_full_forward_logits():
    model = small(position=RotaryPosition)
    idx = torch.randint(0, 97, (2, 12))
    full, _ = model(idx)
    caches = model.new_caches(2, 12)
    first, _ = model(idx[:, :5], caches=caches)
    steps = [model(idx[:, t : t + 1], caches=caches)[0] for t in range(5, 12)]
    assert torch.allclose(torch.cat([first, *steps], dim=1), full, atol=1e-5)


@pytest.mark.parametrize("position", [LearnedPosition, RotaryPosition])
def test_the_kv_cache_holds_the_compute_dtype_under_autocast(position):
    """fp32 weights, bf16 autocast: the cache stores the bf16 keys and values it is given."""
    model = small(position=position)
    idx = torch.randint(0, 97, (2, 8))
    caches = model.new_caches(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(idx[:, :5], caches=caches)
        model(idx[:, 5:6], caches=caches)
        want = model.blocks[0].attn.c_attn(model.blocks[0].ln_1(model.wte(idx))).dtype
    assert want == torch.bfloat16 and model.wte.weight.dtype == torch.float32
    assert all(c.k.dtype == c.v.dtype == want and c.length == 6 for c in caches)


def test_generation_stops_at_the_stop_id():
    model = small()
    first = generate(model, [[1, 2, 3]], 8, temperature=0)[0]
    k = next(i for i in range(1, 8) if first[i] not in first[:i])  # a token not seen before
    assert generate(model, [[1, 2, 3]], 8, temperature=0, stop_id=first[k])[0] == first[:k]
    assert generate(model, [[1, 2, 3]], 8, temperature=0, stop_id=first[0])[0] == []


def test_sampling_rules():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]] * 200)
    gen = torch.Generator().manual_seed(0)
    assert sample_next(logits, temperature=0).tolist() == [1] * 200
    assert sample_next(logits, top_k=1, generator=gen).tolist() == [1] * 200
    assert set(sample_next(logits, top_k=2, generator=gen).tolist()) == {1, 2}
    # top_p: token 1 holds 0.66 of the mass, 1 and 2 together 0.90
    assert set(sample_next(logits, top_p=0.5, generator=gen).tolist()) == {1}
    assert set(sample_next(logits, top_p=0.8, generator=gen).tolist()) == {1, 2}
    again = torch.Generator().manual_seed(7)
    first = sample_next(logits, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, sample_next(logits, generator=again))


@pytest.mark.parametrize(
    "options",
    [{"loss_chunk_size": 7}, {"activation_checkpointing": True}, {"loss_chunk_size": 64,
     "activation_checkpointing": True}],
)  # fmt: skip
def test_memory_options_compute_the_same_loss_and_gradients(options):
    torch.manual_seed(0)
    plain = GPT(vocab_size=100, block_size=16, n_layer=2, n_head=2, d_model=32, vocab_multiple=64)
    lean = GPT(vocab_size=100, block_size=16, n_layer=2, n_head=2, d_model=32, vocab_multiple=64,
               **options)  # fmt: skip
    lean.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 100, (3, 16))
    targets = torch.randint(0, 100, (3, 16))
    targets[0, :5] = -100  # ignored positions count in neither the sum nor the mean
    losses = []
    for model in (plain, lean):
        logits, loss = model(idx, targets)
        loss.backward()
        losses.append(loss)
    assert (logits is None) == bool(options.get("loss_chunk_size"))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)
    for (name, a), b in zip(plain.named_parameters(), lean.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)
