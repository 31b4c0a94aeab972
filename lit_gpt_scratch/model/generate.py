"""Sampling from a GPT: batched prompts of different lengths, KV cache, greedy/top-k/top-p.

Prompts are left-padded to a common length; ``pad_mask`` keeps every real token from attending
to padding, and position ids count from each prompt's first real token, so a prompt decodes
the same alone or in a batch. With ``use_cache`` each step feeds only the newest token and
reuses the keys and values of earlier ones; without it every step reruns the whole sequence.
Both give the same tokens. ``stream`` is the one-sequence form that ``chat`` uses: it yields
each id as it is drawn and keeps the caches for the next turn.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lit_gpt_scratch.model.gpt import GPT


class NonFiniteLogits(ValueError):
    """The model gave NaN or infinite logits: its weights are damaged, or training diverged."""


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of ``logits`` (B, V). ``temperature`` 0 means greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_id: int | None = None,
    use_cache: bool = True,
    forward=None,
    early_stop: bool = True,
    vocab_limit: int | None = None,
) -> list[list[int]]:
    """Continue each prompt by up to ``max_new_tokens`` ids, stopping early at ``stop_id``.

    Returns the new ids of each prompt, without the prompt and without the stop id.

    ``forward``: what to call instead of ``model`` for each step, with ``model``'s arguments
    (a sharded training wrapper whose forward gathers the weights, say). ``early_stop``
    False runs all ``max_new_tokens`` steps even after every row has stopped, so that
    processes generating together make the same number of calls. ``vocab_limit``: sample
    only ids below it (a tokenizer with fewer ids than the model can never get one it cannot
    decode).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(map(len, prompts))
    if longest + max_new_tokens > model.block_size:
        raise ValueError(
            f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's block_size ({model.block_size})"
        )
    device = next(model.parameters()).device
    forward = model if forward is None else forward
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    B = len(prompts)
    idx = torch.zeros(B, longest, dtype=torch.long, device=device)  # left-padded prompts
    pad_mask = torch.zeros(B, longest, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        idx[row, longest - len(prompt) :] = torch.tensor(prompt, device=device)
        pad_mask[row, longest - len(prompt) :] = True

    was_training = model.training
    model.eval()
    caches = model.new_caches(B, longest + max_new_tokens) if use_cache else None
    new_ids = torch.empty(B, 0, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    nonfinite = torch.zeros(B, dtype=torch.bool, device=device)  # read once, at the end
    padded = not bool(pad_mask.all())  # without padding the plain causal kernels serve
    step_input = idx
    for _ in range(max_new_tokens):
        positions = (pad_mask.long().cumsum(dim=-1) - 1).clamp(min=0)  # 0 at the first real token
        keys_mask = pad_mask if padded else None
        if use_cache:
            step_pos = positions[:, -step_input.size(1) :]
            logits, _ = forward(step_input, pos=step_pos, caches=caches, pad_mask=keys_mask)
        else:
            sequence = torch.cat([idx, new_ids], dim=1)
            logits, _ = forward(sequence, pos=positions, pad_mask=keys_mask)
        last = logits[:, -1, :vocab_limit]  # (B, V): the ids the tokenizer has
        finite = torch.isfinite(last).all(dim=-1)  # (B,)
        nonfinite |= ~finite
        last = torch.where(finite[:, None], last, 0.0)  # sampling stays defined; raised below
        next_id = sample_next(last, temperature, top_k, top_p, generator)  # (B,)
        new_ids = torch.cat([new_ids, next_id[:, None]], dim=1)
        if stop_id is not None and early_stop:
            done |= next_id == stop_id
            if done.all():
                break
        step_input = next_id[:, None]
        pad_mask = torch.cat([pad_mask, torch.ones(B, 1, dtype=torch.bool, device=device)], 1)
    model.train(was_training)
    if nonfinite.any():
        raise NonFiniteLogits(
            "the model's logits are not finite (NaN or inf): its weights are damaged, or "
            "training diverged"
        )
    return [_until(row.tolist(), stop_id) for row in new_ids]


@torch.no_grad()
def stream(
    model: GPT,
    ids: list[int],
    caches: list,
    max_new_tokens: int,
    stop_ids: tuple[int, ...] = (),
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    vocab_limit: int | None = None,
) -> Iterator[int]:
    """Feed ``ids`` after what ``caches`` hold, then sample one id at a time, yielding each as
    soon as it is drawn (to show text as it comes), at most ``max_new_tokens``, ending at the
    first of ``stop_ids`` (not yielded). Each yielded id is fed before the next is drawn, so
    afterwards the caches hold the ids, then every yielded id but possibly the last: a
    multi-turn caller reads ``caches[0].length`` to know how far. One sequence (batch 1)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        step_input = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
        for _ in range(max_new_tokens):
            logits, _ = model(step_input, caches=caches)
            last = logits[:, -1, :vocab_limit]  # (1, V)
            if not bool(torch.isfinite(last).all()):  # one read per token: it is shown anyway
                raise NonFiniteLogits(
                    "the model's logits are not finite (NaN or inf): its weights are damaged, "
                    "or training diverged"
                )
            next_id = int(sample_next(last, temperature, top_k, top_p, generator))
            if next_id in stop_ids:
                return
            yield next_id
            step_input = torch.tensor([[next_id]], dtype=torch.long, device=device)
    finally:
        model.train(was_training)


def generate_text(
    model: GPT, tokenizer, prompt: str, max_new_tokens: int, num_samples: int = 1, **sampling
) -> list[str]:
    """Continuations of ``prompt`` as text (without the prompt), at most ``max_new_tokens``
    each and no more than the context leaves, stopping at ``<|endoftext|>``. An empty prompt
    starts a new document. ``sampling``: generate's temperature, top_k, top_p, seed, use_cache.
    """
    ids = tokenizer.encode_ordinary(prompt).tolist() if prompt else [tokenizer.eot_id]
    room = model.block_size - len(ids)
    if room < 1:
        raise ValueError(f"the prompt has {len(ids)} tokens; the model reads {model.block_size}")
    outputs = generate(
        model, [ids] * num_samples, min(max_new_tokens, room), stop_id=tokenizer.eot_id,
        vocab_limit=tokenizer.vocab_size, **sampling,
    )  # fmt: skip
    return [tokenizer.decode(new) for new in outputs]


def _until(ids: list[int], stop_id: int | None) -> list[int]:
    return ids[: ids.index(stop_id)] if stop_id is not None and stop_id in ids else ids
