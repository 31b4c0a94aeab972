"""The document mask: which tokens of a window belong to the same document, and where in it.

Token streams hold documents each ended by an EOT. Under ``GPT(document_mask=True)`` an EOT
*begins* a new document (as a BOS would): it and the tokens after it, up to the next EOT, form
one document. A token attends only to earlier tokens of its own document, and its position id
counts from its document's first token (the EOT), so a document reads the same wherever it sits
in a window. The tokens before a window's first EOT are the tail of a document that began
before the window: they form the window's first document, positions from the window's start.

While decoding with a KV cache, ``DocumentSlots`` keeps the ids and positions of every slot
so far (in the first layer's cache), so a prompt holding an EOT, or a generated EOT, starts a
new document exactly as it would in a window read whole.
"""

from __future__ import annotations

import torch


class DocumentSlots:
    """The token ids and position ids of every slot decoded so far: (B, max_len) each."""

    def __init__(self, batch: int, max_len: int, device):
        self.idx = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self.length = 0

    def update(self, idx: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, T) ids and positions; return all of them so far, (B, T_keys) each."""
        end = self.length + idx.size(1)
        self.idx[:, self.length : end] = idx
        self.pos[:, self.length : end] = pos
        self.length = end
        return self.idx[:, :end], self.pos[:, :end]


def documents(
    idx: torch.Tensor, pos: torch.Tensor, eot_id: int, real: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Document ids and positions within each document of a row of tokens.

    Args:
        idx: (B, T) token ids.
        pos: (B, T) position ids, non-decreasing along each row.
        eot_id: The id that begins a document.
        real: (B, T) False at left padding (never a document boundary); None: no padding.

    Returns (B, T) document ids (0 before the first EOT, +1 at each) and (B, T) positions
    counted from each token's document start.
    """
    starts = idx == eot_id  # (B, T)
    if real is not None:
        starts = starts & real
    segments = starts.long().cumsum(dim=-1)  # (B, T)
    # the position of the latest EOT at or before each token; 0 before the first one
    begun = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=-1).values  # (B, T)
    return segments, pos - begun


def same_document(segments_q: torch.Tensor, segments_k: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T_keys) bool: query and key in the same document, from (B, T) and (B, T_keys)
    document ids (the 1 broadcasts over the heads)."""
    return (segments_q[:, :, None] == segments_k[:, None, :])[:, None]
