"""Stop strings on streamed text: what is safe to show, and where the text ends."""

from __future__ import annotations


class StopText:
    """Text fed piece by piece, cut before the first of ``stops``.

    ``feed`` returns the text that can be shown now: it holds back a tail that could still
    grow into a stop string, so a stream never shows the start of a stop and then takes it
    back.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that can be shown after ``piece``; sets ``stopped`` at a stop string."""
        text = self.pending + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped, self.pending = True, ""
            return text[: min(hits)]
        hold = max((self._partial(text, s) for s in self.stops), default=0)
        self.pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """The held-back tail, at the end of the text (it never became a stop)."""
        tail, self.pending = self.pending, ""
        return tail

    @staticmethod
    def _partial(text: str, stop: str) -> int:
        """The length of the longest end of ``text`` that begins ``stop``."""
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                return n
        return 0
