"""``data.windows``: where training windows start, and the sampler that draws them.

- ``random``: anywhere in the train stream (``windows.WindowSampler``); a window usually
  begins inside a document and may span several.
- ``document_start``: at a document's first token (``samplers.DocumentSampler`` over
  ``documents.document_window_starts``), as nanochat's BOS-aligned loader does; a document
  longer than a window gives one more window every ``block_size`` tokens. Needs the boundary
  files ``prepare`` writes beside the shards.

Both share ``samplers.StartSampler``: seeded epoch permutations, rank striding, exact resume.
A mixture (``mixture_sampler``) draws its sources by weight, each source's windows of the kind
``data.windows`` names. The fit data module and ``show_batch`` build the sampler here, so they
draw the same windows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lit_gpt_scratch.data.documents import document_ends, document_window_starts
from lit_gpt_scratch.data.mixture_sampler import MixtureSampler, source_seed
from lit_gpt_scratch.data.samplers import DocumentSampler, StartSampler
from lit_gpt_scratch.data.windows import WindowSampler
from lit_gpt_scratch.errors import UserError

Windows = Literal["random", "document_start"]
WINDOWS = ("random", "document_start")


def train_sampler(
    windows: str,
    data_dir: str | Path,
    meta: dict,
    num_tokens: int,
    window: int,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    allow_approximate_resume: bool = False,
) -> StartSampler:
    """The train sampler ``data.windows`` names, over a train stream of ``num_tokens``."""
    if windows == "random":
        return WindowSampler(
            num_tokens, window, batch_size, seed, rank, world_size, allow_approximate_resume
        )
    if windows != "document_start":
        raise UserError(f"data.windows must be one of {', '.join(WINDOWS)}, got {windows!r}")
    ends = document_ends(data_dir, meta, "train")
    if ends is None:
        raise UserError(
            f"data.windows: document_start needs the document boundary files that prepare "
            f"writes beside the shards, and {data_dir} was prepared without them: prepare "
            "again into a new data_dir"
        )
    starts = document_window_starts(ends, num_tokens, window)
    return DocumentSampler(
        starts, window, batch_size, seed, rank, world_size, allow_approximate_resume
    )


def mixture_sampler(
    windows: str,
    data_dir: str | Path,
    streams,
    weights: list[float],
    window: int,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    allow_approximate_resume: bool = False,
) -> MixtureSampler:
    """The train sampler of the mixture in ``data_dir`` (``mixture_data.MixtureStreams``):
    its sources by ``weights``, each drawing windows of the kind ``windows`` names."""
    allow = {"allow_approximate_resume": allow_approximate_resume}
    names = streams.names
    each = [  # batch size 1: the mixture's schedule makes the batches
        train_sampler(
            windows, Path(data_dir) / n, m, size, window, 1, source_seed(seed, n), **allow
        )
        for n, m, size in zip(names, streams.metas, streams.sizes, strict=True)
    ]
    return MixtureSampler(
        names, weights, streams.sizes, window, batch_size, seed, rank, world_size,
        corpora=streams.corpora, source_samplers=each, **allow,
    )  # fmt: skip
