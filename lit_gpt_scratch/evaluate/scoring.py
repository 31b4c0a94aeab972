"""Log-likelihoods of continuations, from a GPT's logits.

A request (context, continuation) is tokenized as lm-evaluation-harness does it: spaces at
the end of the context move to the continuation, and the continuation's ids are those of
``context + continuation`` after the context's own ids (an empty context is
``<|endoftext|>``). A sequence longer than the model's context keeps its last
``block_size + 1`` ids (the context is truncated from the left). Requests are right-padded
into one batch: a causal model's logits at a position never see the positions after it,
so padding changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# (B, T) ids -> (B, T, V) logits: a GPT, or a sharded training wrapper around one
Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Encoded:
    """A request's ids: ``tokens[:-1]`` are read, the last ``n_scored`` of ``tokens`` scored."""

    tokens: tuple[int, ...]
    n_scored: int
    truncated: bool = False


@dataclass(frozen=True)
class Score:
    loglikelihood: float  # natural log, summed over the scored ids
    greedy: bool  # each scored id is the argmax of its logits


def encode_request(tokenizer, context: str, continuation: str, block_size: int) -> Encoded:
    """The ids of one (context, continuation) request, for a model reading ``block_size``."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if context:
        context_ids = tokenizer.encode_ordinary(context).tolist()
        whole = tokenizer.encode_ordinary(context + continuation).tolist()
        continuation_ids = whole[len(context_ids) :]
    else:
        context_ids = [tokenizer.eot_id]
        continuation_ids = tokenizer.encode_ordinary(continuation).tolist()
    if not continuation_ids:
        raise ValueError("the continuation has no tokens")
    if len(continuation_ids) > block_size:
        raise ValueError(
            f"the continuation alone is {len(continuation_ids)} tokens; the model reads "
            f"{block_size}"
        )
    tokens = context_ids + continuation_ids
    keep = tokens[-(block_size + 1) :]
    return Encoded(tuple(keep), len(continuation_ids), truncated=len(keep) < len(tokens))


def rolling_windows(ids: list[int], eot_id: int, block_size: int) -> list[Encoded]:
    """Windows that score every id of a document once, the first after ``<|endoftext|>``:
    each window predicts up to ``block_size`` new ids, reading as many ids before them as
    fit (the last, shorter window reads a full context too)."""
    sequence = [eot_id, *ids]
    windows = []
    for start in range(1, len(sequence), block_size):  # the ids predicted: start .. end-1
        end = min(start + block_size, len(sequence))
        first = max(0, end - 1 - block_size)
        windows.append(Encoded(tuple(sequence[first:end]), end - start))
    return windows


@torch.no_grad()
def score(forward: Forward, requests: list[Encoded], device: torch.device | str) -> list[Score]:
    """Each request's log-likelihood and greedy match, from one forward pass of the batch."""
    longest = max(len(r.tokens) for r in requests) - 1
    idx = torch.zeros(len(requests), longest, dtype=torch.long)  # (N, T), right-padded
    for row, request in enumerate(requests):
        idx[row, : len(request.tokens) - 1] = torch.tensor(request.tokens[:-1])
    logits = forward(idx.to(device))  # (N, T, V)
    sums, matches = [], []
    for row, request in enumerate(requests):
        read, n = len(request.tokens) - 1, request.n_scored
        logprobs = F.log_softmax(logits[row, read - n : read].float(), dim=-1)  # (n, V)
        targets = torch.tensor(request.tokens[-n:], device=logprobs.device)  # (n,)
        sums.append(logprobs.gather(-1, targets[:, None]).sum())
        matches.append((logprobs.argmax(dim=-1) == targets).all())
    # one read back from the device for the whole batch, not two per request
    lls, greedy = torch.stack(sums).tolist(), torch.stack(matches).tolist()
    return [Score(ll, g) for ll, g in zip(lls, greedy, strict=True)]


def batches(requests: Iterable, size: int) -> Iterable[list]:
    batch = []
    for request in requests:
        batch.append(request)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def gpt_forward(gpt) -> Forward:
    """The GPT as a ``Forward``: its logits, without a loss."""
    return lambda idx: gpt(idx)[0]
