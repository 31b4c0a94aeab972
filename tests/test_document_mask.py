"""GPT(document_mask=True): attention within documents, positions restarting at each EOT."""

from __future__ import annotations

import pytest
import torch
from test_model import small

import lit_gpt_scratch.model.attention as attention_module
from lit_gpt_scratch.data.datamodule import check_against_model
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.model.attention import MathAttention
from lit_gpt_scratch.model.generate import generate
from lit_gpt_scratch.model.position import LearnedPosition, RotaryPosition

EOT = 5
PLUGINS = {
    "learned": {"position": LearnedPosition},
    "rope": {"position": RotaryPosition},
    "math_rope_gqa": {
        "position": RotaryPosition,
        "attention": lambda *s: MathAttention(*s, n_kv_head=2),
    },
}


def masked(**plugins):
    return small(document_mask=True, eot_id=EOT, **plugins)


def window(*documents: list[int]) -> torch.Tensor:
    """(1, T) the documents one after the other; each after the first begins with its EOT."""
    return torch.tensor([[t for doc in documents for t in doc]])


A, B, C = [11, 12, 13, 14], [EOT, 21, 22, 23, 24, 25], [EOT, 31, 32]


@pytest.mark.parametrize("plugins", PLUGINS)
def test_a_change_in_an_earlier_document_changes_no_logit_of_a_later_one(plugins):
    idx = window(A, B, C)
    logits, _ = masked(**PLUGINS[plugins])(idx)
    unmasked, _ = small(**PLUGINS[plugins])(idx)
    for t in range(len(A) + len(B)):  # every token of A and B
        changed = idx.clone()
        changed[0, t] = 40 + t
        later = len(A) + len(B) if t >= len(A) else len(A)  # the next document's first token
        new, _ = masked(**PLUGINS[plugins])(changed)
        assert torch.equal(new[:, later:], logits[:, later:]), t
        assert not torch.allclose(new[:, t], logits[:, t])  # the token itself moves
        moved, _ = small(**PLUGINS[plugins])(changed)
        assert not torch.allclose(moved[:, later:], unmasked[:, later:])  # without the mask


@pytest.mark.parametrize("plugins", PLUGINS)
def test_positions_restart_each_document_reads_as_it_would_alone(plugins):
    model = masked(**PLUGINS[plugins])
    logits, _ = model(window(A, B, C))
    starts = [0, len(A), len(A) + len(B)]
    for doc, start in zip((A, B, C), starts, strict=True):
        alone, _ = model(window(doc))
        torch.testing.assert_close(logits[:, start : start + len(doc)], alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(AssertionError):  # the test can fail: without the mask B is not alone
        unmasked = small(**PLUGINS[plugins])
        torch.testing.assert_close(
            unmasked(window(A, B))[0][:, len(A) :], unmasked(window(B))[0], rtol=1e-5, atol=1e-5
        )


def test_mask_off_is_todays_model_and_kernel_call_bitwise(monkeypatch):
    calls = []
    sdpa = attention_module.F.scaled_dot_product_attention

    def recording(q, k, v, **kw):
        calls.append(kw)
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", recording)
    idx, targets = window(A, B, C), torch.randint(0, 97, (1, 13))
    today, off = small(), small(document_mask=False, eot_id=EOT)
    assert all(
        torch.equal(a, b) for a, b in zip(today(idx, targets), off(idx, targets), strict=True)
    )
    assert calls and all(kw == {"is_causal": True} for kw in calls)  # no mask tensor built
    calls.clear()
    masked()(idx)
    assert calls and all(kw["attn_mask"].shape == (1, 1, 13, 13) for kw in calls)


def test_training_loss_and_gradients_flow_with_the_mask_and_activation_checkpointing():
    idx = torch.randint(0, 97, (2, 17))
    idx[:, [4, 9]] = EOT
    plain = masked().train()
    recomputed = masked(activation_checkpointing=True).train()
    losses = []
    for model in (plain, recomputed):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        losses.append(loss)
    assert torch.equal(losses[0], losses[1])
    for p, q in zip(plain.parameters(), recomputed.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


@pytest.mark.parametrize("plugins", ["learned", "rope"])
def test_generation_with_an_eot_in_the_prompt_continues_only_the_last_document(plugins):
    """The context after the prompt's last EOT is all the model reads: the same tokens with
    and without the KV cache, alone or in a padded batch, and as the last document alone."""
    model = masked(**PLUGINS[plugins])
    prompt, last = A + B[:3], B[:3]
    short = [EOT, 41]
    options = dict(max_new_tokens=8, temperature=0)
    cached = generate(model, [prompt], **options)
    assert cached == generate(model, [prompt], use_cache=False, **options)
    assert cached == generate(model, [last], **options)
    batch = generate(model, [short, prompt], **options)  # left padding under the short one
    assert batch == [generate(model, [short], **options)[0], cached[0]]
    assert batch == generate(model, [short, prompt], use_cache=False, **options)
    unmasked = small(**PLUGINS[plugins])  # the test can fail: there A is read too
    assert generate(unmasked, [prompt], **options) != generate(unmasked, [last], **options)


def test_a_generated_eot_begins_a_new_document():
    model = masked()
    prompt = A + [EOT, 21]
    logits, _ = model(window(prompt))
    step, caches = None, model.new_caches(1, 16)
    for t in range(len(prompt)):  # one token at a time through the cache
        step, _ = model(window(prompt[t : t + 1]), caches=caches)
    torch.testing.assert_close(step[:, -1], logits[:, -1], rtol=1e-5, atol=1e-5)
    alone, _ = model(window([EOT, 21]))
    torch.testing.assert_close(step[:, -1], alone[:, -1], rtol=1e-5, atol=1e-5)


def test_document_mask_needs_the_data_eot_id():
    with pytest.raises(UserError, match=r"document_mask needs model\.gpt\.init_args\.eot_id"):
        small(document_mask=True)
    with pytest.raises(UserError, match="eot_id 97 is not an id of the 97-id vocabulary"):
        small(document_mask=True, eot_id=97)
    meta = {"vocab_size": 97, "tokenizer": "t", "eot_id": 6}
    with pytest.raises(UserError, match="eot_id is 5, the data's end-of-text id is 6"):
        check_against_model(meta, 32, masked())
    check_against_model({**meta, "eot_id": EOT}, 32, masked())
    check_against_model(meta, 32, small())  # without the mask eot_id means nothing
