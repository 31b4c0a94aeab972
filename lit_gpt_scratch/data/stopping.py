"""Ctrl-C or SIGTERM while ``prepare`` tokenizes: a request to stop between two chunks, never
an exception raised at a random point.

A ``KeyboardInterrupt`` raised wherever the main thread happens to be can land inside
``concurrent.futures`` (``submit`` between registering a work item and queueing it, or holding
the executor's locks): the pool's shutdown then waits forever for work that never runs. So
while chunks are tokenized, the signal handler only records the request; the loop checks it
after each chunk, makes its progress durable, and raises there. A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from lit_gpt_scratch.errors import Terminated

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """The stop signals received so far (first one first)."""

    def __init__(self):
        self.signals: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.signals)

    def raise_it(self) -> None:
        """Raise what the first signal means, from a safe point of the main loop."""
        if self.signals[0] == signal.SIGTERM:
            raise Terminated
        raise KeyboardInterrupt

    def _handle(self, signum, frame) -> None:
        if self.signals:
            _stop_at_once(signum)
        self.signals.append(signum)


def _stop_at_once(signum: int) -> None:
    # The files on disk are what a kill at this moment leaves: a rerun resumes from the last
    # checkpoint. os._exit, not an exception: that could hang in the pool's internals again.
    what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    sys.stderr.write(
        f"error: stopped at once by a second {what}: run the same command again to continue "
        "from the last checkpoint\n"
    )
    sys.stderr.flush()
    os._exit(128 + signum)  # the workers die with this process (see init_worker)


@contextlib.contextmanager
def stop_requests():
    """Within the block, SIGINT and SIGTERM only record a request, which the caller checks
    (``raise_it`` raises KeyboardInterrupt or Terminated); outside, the
    handlers are what they were. A signal the process ignores (a background job's SIGINT)
    stays ignored."""
    requests = StopRequests()
    if threading.current_thread() is not threading.main_thread():
        yield requests  # handlers can only be set from the main thread: leave them alone
        return
    previous = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, requests._handle)
    try:
        yield requests
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def sigint_ignored():
    """Start worker processes with Ctrl-C ignored, a disposition they keep through exec.

    Ctrl-C reaches the whole process group; only the main process should act on it, stopping
    cleanly with its last checkpoint kept, rather than every worker printing a traceback.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
