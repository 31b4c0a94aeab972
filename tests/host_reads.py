"""The host-sync counter (``lit_gpt_scratch.bench.host_syncs``) under the name the tests use,
importable by class_path with tests/ on PYTHONPATH: ``host_reads.CountHostReads``. Every
instance is kept in ``COUNTERS``, newest last, for a test to read after an in-process fit."""

from __future__ import annotations

from lit_gpt_scratch.bench.host_syncs import READS, CountHostSyncs

__all__ = ["COUNTERS", "READS", "CountHostReads"]

COUNTERS: list[CountHostReads] = []


class CountHostReads(CountHostSyncs):
    """``CountHostSyncs`` that registers itself in ``COUNTERS``."""

    def __init__(self, out: str | None = None, cuda_sync_debug: bool = False):
        super().__init__(out=out, cuda_sync_debug=cuda_sync_debug)
        COUNTERS.append(self)
