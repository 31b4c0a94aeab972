"""Requests decoded together: one worker thread, one batch at a time on the KV cache.

Requests wait in a queue; when the worker is free it takes every waiting request (up to
``max_batch_size``, and as many as fit in the context together) and decodes them as one
left-padded batch (``decode_steps``), each row sampled with its own settings and its own
random generator. A row ends at a stop id, a stop string or its ``max_tokens``; the batch ends
when every row has. Requests that arrive meanwhile wait for the next batch (no joining a batch
under way: the rows of one batch share a cache of one length).
"""

from __future__ import annotations

import codecs
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lit_gpt_scratch.model.generate import decode_steps, sample_next
from lit_gpt_scratch.serve.requests import Generation
from lit_gpt_scratch.serve.stop_text import StopText


@dataclass
class Job:
    """A request in the queue. ``emit`` hears, from the worker thread, ("text", piece) for
    each piece of the answer as it is decoded, then one ("done", finish_reason,
    completion_tokens) or ("error", message). ``cancelled``: the client left; stop its row."""

    request: Generation
    emit: Callable[[tuple], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


class Batcher:
    """Decodes queued jobs with ``gpt`` (eval mode) through tokenizer ``tok``."""

    def __init__(self, gpt, tok, max_batch_size: int = 8):
        self.gpt, self.tok, self.max_batch_size = gpt, tok, max_batch_size
        self.device = next(gpt.parameters()).device
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.batches = 0  # decoded so far, and the largest: /health shows them
        self.largest_batch = 0
        self.thread = threading.Thread(target=self._work, name="batcher", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            try:
                self._decode(batch)
            except Exception as e:  # a failed batch fails its requests, not the server
                for job in batch:
                    job.emit(("error", f"{type(e).__name__}: {e}"))

    def _next_batch(self) -> list[Job]:
        """The first waiting job, and those waiting behind it that fit beside it."""
        batch = [self.jobs.get()]
        held: list[Job] = []
        while len(batch) < self.max_batch_size:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            (batch if self._fits([*batch, job]) else held).append(job)
        for job in held:  # back in the queue, for the next batch
            self.jobs.put(job)
        return batch

    def _fits(self, batch: list[Job]) -> bool:
        longest = max(len(j.request.ids) for j in batch)
        return longest + max(j.request.max_tokens for j in batch) <= self.gpt.block_size

    @torch.no_grad()
    def _decode(self, batch: list[Job]) -> None:
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        rows = [_Row(job, self.tok, self.device) for job in batch]
        vocab = self.tok.vocab_size

        def pick(logits: torch.Tensor) -> torch.Tensor:  # (B, V) -> (B,)
            ids = torch.zeros(len(rows), dtype=torch.long, device=self.device)
            for i, row in enumerate(rows):
                if not row.done:
                    ids[i] = row.sample(logits[i : i + 1, :vocab])
            return ids

        steps = max(j.request.max_tokens for j in batch)
        prompts = [j.request.ids for j in batch]
        for next_ids in decode_steps(self.gpt, prompts, steps, pick):
            for row, next_id in zip(rows, next_ids.tolist(), strict=True):
                if not row.done:
                    row.take(next_id)
            if all(row.done for row in rows):
                break


class _Row:
    """One job's state within a batch: its generator, decoder, stop strings and count."""

    def __init__(self, job: Job, tok, device):
        self.job, self.request, self.tok = job, job.request, tok
        self.generator = torch.Generator(device=device)
        if self.request.seed is None:
            self.generator.seed()  # a fresh one
        else:
            self.generator.manual_seed(self.request.seed)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = StopText(self.request.stops)
        self.count = 0
        self.done = False

    def sample(self, logits: torch.Tensor) -> torch.Tensor:  # (1, V) -> (1,)
        if not bool(torch.isfinite(logits).all()):
            self._finish(("error", "the model's logits are not finite (NaN or inf)"))
            return torch.zeros(1, dtype=torch.long, device=logits.device)
        r = self.request
        return sample_next(logits, r.temperature, r.top_k, r.top_p, self.generator)

    def take(self, next_id: int) -> None:
        if self.job.cancelled.is_set():
            self.done = True
            return
        if next_id in self.request.stop_ids:
            return self._end("stop")
        self.count += 1
        piece = self.decoder.decode(self.tok.encoding.decode_single_token_bytes(next_id))
        shown = self.stops.feed(piece)
        if shown:
            self.job.emit(("text", shown))
        if self.stops.stopped:
            return self._finish(("done", "stop", self.count))
        if self.count == self.request.max_tokens:
            self._end("length")

    def _end(self, reason: str) -> None:
        tail = self.stops.feed(self.decoder.decode(b"", final=True))
        if not self.stops.stopped:
            tail += self.stops.flush()
        if tail:
            self.job.emit(("text", tail))
        self._finish(("done", "stop" if self.stops.stopped else reason, self.count))

    def _finish(self, event: tuple) -> None:
        self.done = True
        self.job.emit(event)
