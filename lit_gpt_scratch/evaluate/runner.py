"""Running tasks on a GPT: encode once, score in batches, shard across ranks, reduce the sums.

Rank ``r`` of ``w`` scores items ``r, r + w, ...``; ``reduce`` adds a tensor across ranks
(None: one process). With ``lockstep`` every rank makes the same number of forward calls,
padding with a discarded batch where its share is shorter: a sharded (FSDP) model gathers
its weights inside each call, so all ranks must call together.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.evaluate.metrics import SUMS, item_sums, task_metrics
from lit_gpt_scratch.evaluate.scoring import (
    Encoded,
    Forward,
    batches,
    encode_request,
    rolling_windows,
    score,
)
from lit_gpt_scratch.evaluate.tasks import Task

log = logging.getLogger(__name__)
Reduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EncodedTask:
    task: Task
    items: tuple[tuple[Encoded, ...], ...]  # per item, one Encoded per request


def encode_task(task: Task, tokenizer, block_size: int, warn: bool = True) -> EncodedTask:
    """The task's requests as ids; says once (``warn``) how many contexts were cut to fit."""
    items = []
    for item in task.items:
        try:
            items.append(
                tuple(encode_request(tokenizer, c, k, block_size) for c, k in item.requests)
            )
        except ValueError as e:
            raise UserError(f"task {task.name}: {item.where}: {e}") from None
    cut = sum(any(r.truncated for r in requests) for requests in items)
    if cut and warn:
        log.warning(
            f"task {task.name}: {cut} of {len(items)} items are longer than the model's "
            f"block_size {block_size}: their contexts are truncated from the left"
        )
    return EncodedTask(task, tuple(items))


def item_scores(
    forward: Forward,
    items: list[tuple[Encoded, ...]],
    device,
    batch_size: int,
    n_batches: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[list]:
    """The ``Score`` of every request of every item, ``batch_size`` items per forward call;
    ``n_batches`` (at least as many as needed) pads with discarded calls for lockstep."""
    scores: list[list] = []
    for batch in batches(items, batch_size):
        flat = [request for requests in batch for request in requests]
        results = iter(score(forward, flat, device))
        scores.extend([next(results) for _ in requests] for requests in batch)
        if progress:
            progress(len(batch))
    padding = (n_batches or 0) - math.ceil(len(items) / batch_size)
    for _ in range(padding):
        score(forward, list(items[0] if items else []) or [_filler()], device)
    return scores


def _filler() -> Encoded:
    return Encoded((0, 0), 1)


def run_tasks(
    forward: Forward,
    tasks: list[EncodedTask],
    device,
    batch_size: int = 4,
    rank: int = 0,
    world_size: int = 1,
    reduce: Reduce | None = None,
    lockstep: bool = False,
    progress: bool = False,
) -> dict[str, dict]:
    """Metrics of each task (see ``metrics.task_metrics``), from all ranks' items together."""
    sums = torch.zeros(len(tasks), SUMS, dtype=torch.float64)
    for row, encoded in enumerate(tasks):
        share = list(encoded.items[rank::world_size])
        per_rank = math.ceil(len(encoded.items) / world_size)
        with _progress_bar(encoded.task.name, len(share), progress and rank == 0) as advance:
            scores = item_scores(
                forward, share, device, batch_size,
                n_batches=math.ceil(per_rank / batch_size) if lockstep else None,
                progress=advance,
            )  # fmt: skip
        for item, item_score in zip(encoded.task.items[rank::world_size], scores, strict=True):
            sums[row] += torch.tensor(item_sums(encoded.task, item, item_score)).double()
    if reduce is not None:
        sums = reduce(sums.to(device)).cpu()
    return {t.task.name: task_metrics(t.task, sums[row].tolist()) for row, t in enumerate(tasks)}


def text_bits_per_byte(
    forward: Forward,
    tokenizer,
    text: str,
    block_size: int,
    device,
    batch_size: int = 4,
    rank: int = 0,
    world_size: int = 1,
    reduce: Reduce | None = None,
    lockstep: bool = False,
) -> dict:
    """Bits per byte of ``text`` (its UTF-8 bytes), every token scored once with up to
    ``block_size`` tokens before it: comparable across tokenizers. Also ``loss``, the mean
    negative log-likelihood per token (nats), and the counts."""
    ids = tokenizer.encode_ordinary(text).tolist()
    if not ids:
        raise UserError("--text holds no text")
    windows = rolling_windows(ids, tokenizer.eot_id, block_size)
    share = [(w,) for w in windows[rank::world_size]]
    n_batches = math.ceil(math.ceil(len(windows) / world_size) / batch_size)
    scores = item_scores(forward, share, device, batch_size, n_batches if lockstep else None)
    nll = torch.tensor([-sum(s[0].loglikelihood for s in scores)], dtype=torch.float64)
    if reduce is not None:
        nll = reduce(nll.to(device)).cpu()
    n_bytes = len(text.encode("utf-8"))
    total = float(nll[0])
    return {
        "bpb": total / math.log(2) / n_bytes,
        "loss": total / len(ids),
        "tokens": len(ids),
        "bytes": n_bytes,
    }


class _progress_bar:
    """A tqdm bar on stderr while ``show``; else nothing."""

    def __init__(self, name: str, total: int, show: bool):
        self.bar = None
        if show:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=name, unit="item", leave=False, dynamic_ncols=True)

    def __enter__(self):
        return self.bar.update if self.bar else None

    def __exit__(self, *exc):
        if self.bar:
            self.bar.close()
