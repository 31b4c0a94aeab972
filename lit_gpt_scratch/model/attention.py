"""Causal self-attention plug-ins, and the key/value cache they share during generation.

Contract: ``Attention(d_model, n_head, block_size, **options)`` with
``forward(x, position, pos, cache=None, pad_mask=None, doc_mask=None) -> (B, T, d_model)`` where

- ``x`` (B, T, C) is the normed residual stream, ``pos`` (T,) or (B, T) its position ids,
- ``position`` is the model's position plug-in (its ``rotate`` is applied to q and k),
- ``cache`` is this layer's ``KVCache`` when decoding incrementally,
- ``pad_mask`` (B, T_keys) is False at left-padding slots of a batch of prompts,
- ``doc_mask`` (B, 1, T, T_keys) is True where query and key are in the same document
  (``GPT(document_mask=True)``, ``model/documents.py``); None: one document.

The output projection is named ``c_proj``: the GPT gives it the scaled residual init.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.model.norm import RMSNorm
from lit_gpt_scratch.model.position import Position


class KVCache:
    """Keys and values of one layer for every slot decoded so far: (B, h_kv, max_len, hs).

    The storage is allocated at the first ``update``, in the dtype and on the device of the
    keys and values that arrive: under autocast (or FSDP mixed precision) that is the compute
    dtype, not the weights' dtype.
    """

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_size: int):
        self.shape = (batch, n_kv_head, max_len, head_size)
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.length = 0
        self.documents = None  # the slots' ids, kept by a GPT with document_mask (DocumentSlots)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys and values; return all of them so far, (B, h_kv, T_keys, hs)."""
        if self.k is None:
            self.k = k.new_zeros(self.shape)
            self.v = v.new_zeros(self.shape)
        start, end = self.length, self.length + k.size(2)
        if end > self.k.size(2):
            raise ValueError(f"KV cache holds {self.k.size(2)} slots, {end} needed")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    """Base class of the attention plug-ins (the type the GPT's ``attention`` factory returns)."""

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty cache of this layer's keys and values for ``max_len`` slots."""
        raise NotImplementedError(f"{type(self).__name__} does not support a KV cache")


class CausalSelfAttention(Attention):
    """Multi-head causal self-attention on ``F.scaled_dot_product_attention``.

    Options: grouped-query attention (``n_kv_head`` key/value heads shared by groups of query
    heads), QK-norm (RMSNorm of each head's queries and keys), a sliding window (each token sees
    itself and the ``window - 1`` tokens before it), and biases (GPT-2 has them).
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        block_size: int,
        n_kv_head: int | None = None,
        qk_norm: bool = False,
        window: int | None = None,
        bias: bool = True,
    ):
        super().__init__()
        n_kv_head = n_kv_head or n_head
        if d_model % n_head:
            raise UserError(f"model.gpt d_model {d_model} does not divide by n_head {n_head}")
        if n_kv_head < 1 or n_head % n_kv_head:
            raise UserError(
                f"model.gpt attention n_kv_head {n_kv_head} does not divide n_head {n_head}"
            )
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_size = d_model // n_head
        self.window = window
        # one fused projection: n_head query heads, then n_kv_head key and n_kv_head value heads
        self.c_attn = nn.Linear(d_model, (n_head + 2 * n_kv_head) * self.head_size, bias=bias)
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)
        self.q_norm = RMSNorm(self.head_size) if qk_norm else None
        self.k_norm = RMSNorm(self.head_size) if qk_norm else None

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache(batch, self.n_kv_head, max_len, self.head_size)

    def _heads(self, x, position: Position, pos, cache: KVCache | None):
        """Queries, and keys and values with every cached slot, one per query head."""
        B, T, C = x.shape
        hs, h, h_kv = self.head_size, self.n_head, self.n_kv_head
        q, k, v = self.c_attn(x).split([h * hs, h_kv * hs, h_kv * hs], dim=-1)
        q = q.view(B, T, h, hs).transpose(1, 2)  # (B, h, T, hs)
        k = k.view(B, T, h_kv, hs).transpose(1, 2)  # (B, h_kv, T, hs)
        v = v.view(B, T, h_kv, hs).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = position.rotate(q, k, pos)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, h_kv, T_keys, hs): every slot so far
        if h_kv != h:  # each key/value head serves a group of h / h_kv query heads
            k = k.repeat_interleave(h // h_kv, dim=1)
            v = v.repeat_interleave(h // h_kv, dim=1)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        position: Position,
        pos: torch.Tensor,
        cache: KVCache | None = None,
        pad_mask: torch.Tensor | None = None,
        doc_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self._heads(x, position, pos, cache)  # (B, h, T, hs), (B, h, T_keys, hs) x2
        mask = self._mask(T, k.size(2), pad_mask, x.device, doc_mask=doc_mask)
        # Explicit branches, never ``is_causal=<expression of T>``: once torch.compile makes T
        # dynamic, ``T > 1`` is a SymBool, which SDPA refuses; that graph break inside the
        # block loop would make Dynamo run the whole GPT.forward eagerly from then on. A
        # Python ``if`` on T is a guard instead, and each branch stays one graph.
        if mask is not None:  # padding, documents, a sliding window, queries after cached keys
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif T > 1:  # plain causal attention (training, prefill): the fast kernels
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # one new query that may see every key (a decoding step)
            y = F.scaled_dot_product_attention(q, k, v)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side
        return self.c_proj(y)

    def _mask(
        self, T: int, T_keys: int, pad_mask, device, always: bool = False, doc_mask=None
    ) -> torch.Tensor | None:
        """Which keys each query may see, (B or 1, 1, T, T_keys) bool; None where SDPA's
        plain causal or unmasked call does the same (see forward), unless ``always``."""
        offset = T_keys - T  # keys already in the cache before these queries
        plain = pad_mask is None and doc_mask is None and self.window is None
        if not always and plain and (offset == 0 or T == 1):
            return None
        q_slot = torch.arange(offset, T_keys, device=device)[:, None]  # (T, 1)
        k_slot = torch.arange(T_keys, device=device)[None, :]  # (1, T_keys)
        mask = k_slot <= q_slot
        if self.window is not None:
            mask = mask & (q_slot - k_slot < self.window)
        mask = mask[None, None]
        if doc_mask is not None:
            mask = mask & doc_mask  # (B, 1, T, T_keys)
        if pad_mask is not None:
            # Never attend to padding; each query still sees itself, so a padding query's row
            # is not empty (its output is ignored, but must not be NaN).
            mask = (mask & pad_mask[:, None, None, :]) | (k_slot == q_slot)
        return mask


class MathAttention(CausalSelfAttention):
    """The same attention written out: ``softmax(q kᵀ / √hs + causal mask) · v``, no SDPA.

    Same constructor, weights and options as ``CausalSelfAttention`` (``n_kv_head``,
    ``qk_norm``, ``window``, ``bias``; positions and the KV cache through the same code), so
    a checkpoint's weights load into either. Slower and O(T²) in memory: for reading and
    drawing the attention pattern, not for training.

    With ``keep_weights`` (an option, or an attribute set later) each forward stores its
    attention weights, detached, in ``last_weights``: (B, n_head, T, T_keys); each row sums
    to 1 and is zero at every key the query may not see.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        block_size: int,
        n_kv_head: int | None = None,
        qk_norm: bool = False,
        window: int | None = None,
        bias: bool = True,
        keep_weights: bool = False,
    ):
        super().__init__(d_model, n_head, block_size, n_kv_head, qk_norm, window, bias)
        self.keep_weights = keep_weights
        self.last_weights: torch.Tensor | None = None

    def forward(
        self,
        x: torch.Tensor,
        position: Position,
        pos: torch.Tensor,
        cache: KVCache | None = None,
        pad_mask: torch.Tensor | None = None,
        doc_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        hs = self.head_size
        q, k, v = self._heads(x, position, pos, cache)  # (B, h, T, hs), (B, h, T_keys, hs) x2
        T_keys = k.size(2)
        mask = self._mask(T, T_keys, pad_mask, x.device, always=True, doc_mask=doc_mask)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, h, T, T_keys)
        scores = scores.masked_fill(~mask, float("-inf"))
        # the softmax in fp32 at least (bf16 under autocast loses the small weights)
        wide = torch.promote_types(scores.dtype, torch.float32)
        weights = torch.softmax(scores.to(wide), dim=-1).type_as(v)
        if self.keep_weights:
            self.last_weights = weights.detach()
        y = weights @ v  # (B, h, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.c_proj(y)
