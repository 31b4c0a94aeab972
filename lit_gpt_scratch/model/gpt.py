"""The GPT: token embedding -> position -> N pre-norm blocks -> final norm -> LM head.

Each block is ``x + attn(norm(x))`` then ``x + mlp(norm(x))``. Attention, MLP, norm and
position are plug-ins: the GPT receives *factories* (classes, or classes with options bound
from YAML by jsonargparse) and calls them with the shapes it knows. It never names a concrete
variant, so a new one is a new class and a YAML change:

    attention:
      class_path: lit_gpt_scratch.model.attention.CausalSelfAttention
      init_args: {n_kv_head: 4, qk_norm: true}

Names follow GPT-2 (``wte``, ``ln_1``, ``c_attn``, ``c_proj``, ``ln_f``, ``lm_head``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lit_gpt_scratch.errors import UserError, check_at_least
from lit_gpt_scratch.model.attention import Attention, CausalSelfAttention, KVCache
from lit_gpt_scratch.model.documents import DocumentSlots, documents, same_document
from lit_gpt_scratch.model.mlp import MLP, GeluMLP
from lit_gpt_scratch.model.norm import LayerNorm, Norm
from lit_gpt_scratch.model.position import LearnedPosition, Position


class Block(nn.Module):
    """One transformer block, pre-norm: each sublayer reads a normed copy of the stream."""

    def __init__(self, d_model, n_head, block_size, attention, mlp, norm):
        super().__init__()
        self.ln_1 = norm(d_model)
        self.attn = attention(d_model, n_head, block_size)
        self.ln_2 = norm(d_model)
        self.mlp = mlp(d_model)

    def forward(self, x, position, pos, cache=None, pad_mask=None, doc_mask=None):
        x = x + self.attn(self.ln_1(x), position, pos, cache, pad_mask, doc_mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A decoder-only transformer language model.

    Args:
        vocab_size: Token ids the model predicts (the tokenizer's ``n_vocab``: 50257 for gpt2).
        block_size: Longest sequence (context length) the model reads.
        n_layer: Transformer blocks.
        n_head: Attention (query) heads per block.
        d_model: Width of the residual stream.
        attention: Factory ``(d_model, n_head, block_size) -> Attention``.
        mlp: Factory ``(d_model) -> MLP``.
        norm: Factory ``(d_model) -> Norm``, used before each sublayer and at the end.
        position: Factory ``(d_model, n_head, block_size) -> Position``.
        tie_embeddings: Share one matrix between the token embedding and the LM head.
        vocab_multiple: Pad the embedding and head to a multiple of this many rows: 50,257
            becomes 50,304, whose matmuls suit GPU tensor cores. Padded ids never get
            probability and are never targets, and ``num_params`` leaves them out.
        init_std: Std of the normal init of linear and embedding weights; the residual output
            projections (``c_proj``) get ``init_std / sqrt(2 * n_layer)``.
        zero_init_projections: Start every residual output projection (``c_proj``) at zero,
            so each block begins as the identity (modded-nanogpt, nanochat).
        logit_softcap: Squash the logits into (-cap, cap) with ``cap * tanh(logits / cap)``
            (Gemma 2, modded-nanogpt); None: raw logits.
        activation_checkpointing: In training, keep only each block's input and recompute the
            block in the backward pass: activation memory of one block instead of all, for
            about one more forward pass of compute.
        loss_chunk_size: With targets, compute the head and the cross-entropy this many
            positions at a time, recomputing each chunk in the backward pass, so the
            (B, T, vocab) logits are never held at once; ``forward`` then returns no logits.
            0: the whole batch at once.
        document_mask: Each token attends only within its own document, and positions count
            from its document's start (``model/documents.py``): an ``eot_id`` token begins a
            new document. Off: one causal attention over the whole window (SDPA's causal
            kernels, no mask tensor).
        eot_id: The tokenizer's end-of-text id (50256 for gpt2), which ``document_mask``
            splits documents at; must equal the data's (``meta.json``'s ``eot_id``).

    ``activation_checkpointing`` and ``loss_chunk_size`` change how the model runs, never what
    it computes: a checkpoint resumes with either setting.
    """

    def __init__(
        self,
        vocab_size: int = 50257,
        block_size: int = 1024,
        n_layer: int = 12,
        n_head: int = 12,
        d_model: int = 768,
        attention: Callable[[int, int, int], Attention] = CausalSelfAttention,
        mlp: Callable[[int], MLP] = GeluMLP,
        norm: Callable[[int], Norm] = LayerNorm,
        position: Callable[[int, int, int], Position] = LearnedPosition,
        tie_embeddings: bool = True,
        vocab_multiple: int = 64,
        init_std: float = 0.02,
        zero_init_projections: bool = False,
        logit_softcap: float | None = None,
        activation_checkpointing: bool = False,
        loss_chunk_size: int = 0,
        document_mask: bool = False,
        eot_id: int | None = None,
    ):
        super().__init__()
        sizes = dict(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
                     n_head=n_head, d_model=d_model, vocab_multiple=vocab_multiple)  # fmt: skip
        for key, value in sizes.items():
            check_at_least(f"model.gpt.init_args.{key}", value, 1)
        if loss_chunk_size < 0:
            raise UserError(f"model.gpt loss_chunk_size must be 0 or more, got {loss_chunk_size}")
        if logit_softcap is not None and logit_softcap <= 0:
            raise UserError(f"model.gpt logit_softcap must be positive, got {logit_softcap}")
        if document_mask and eot_id is None:
            raise UserError(
                "model.gpt.init_args.document_mask needs model.gpt.init_args.eot_id: the "
                "tokenizer's end-of-text id (50256 for gpt2)"
            )
        if eot_id is not None and not 0 <= eot_id < vocab_size:
            raise UserError(
                f"model.gpt.init_args.eot_id {eot_id} is not an id of the {vocab_size}-id "
                "vocabulary"
            )
        self.document_mask, self.eot_id = document_mask, eot_id
        self.logit_softcap = logit_softcap
        self.zero_init_projections = zero_init_projections
        self.activation_checkpointing = activation_checkpointing
        self.loss_chunk_size = loss_chunk_size
        self.vocab_size, self.block_size, self.n_layer = vocab_size, block_size, n_layer
        self.padded_vocab_size = vocab_multiple * math.ceil(vocab_size / vocab_multiple)
        self.wte = nn.Embedding(self.padded_vocab_size, d_model)
        self.position = position(d_model, n_head, block_size)
        self.blocks = nn.ModuleList(
            Block(d_model, n_head, block_size, attention, mlp, norm) for _ in range(n_layer)
        )
        self.ln_f = norm(d_model)
        self.lm_head = nn.Linear(d_model, self.padded_vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.init_weights(init_std)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                scaled = name.endswith("c_proj")  # a residual output projection
                module.weight.normal_(0.0, std / math.sqrt(2 * self.n_layer) if scaled else std)
                if scaled and self.zero_init_projections:
                    module.weight.zero_()
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        pos: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
        pad_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab_size), and the mean next-token cross-entropy if ``targets``.

        Args:
            idx: (B, T) token ids.
            targets: (B, T) the id that follows each position (-100: ignored).
            pos: (T,) or (B, T) position ids; by default 0..T-1, after any cached slots.
            caches: One ``KVCache`` per block, for incremental decoding (see generate.py).
            pad_mask: (B, T_keys) False at the left padding of a batch of prompts.

        With ``document_mask``, ``pos`` is recounted from each token's document start and
        attention stays within documents (the caches remember the ids decoded so far).
        """
        x = self.features(idx, pos, caches, pad_mask)
        if targets is not None and self.loss_chunk_size:
            return None, self._chunked_loss(x.reshape(-1, x.size(-1)), targets.reshape(-1))
        logits = self._logits(x)
        if targets is None:
            return logits, None
        return logits, self._cross_entropy(logits, targets.reshape(-1), "mean")

    def features(
        self,
        idx: torch.Tensor,
        pos: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
        pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, d_model) the final hidden states (after ``ln_f``), before any head: what the
        LM head turns into logits and a classification head reads. Arguments as ``forward``."""
        B, T = idx.shape
        start = caches[0].length if caches else 0
        if start + T > self.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.block_size}")
        if pos is None:
            pos = torch.arange(start, start + T, device=idx.device)
        doc_mask = None  # (B, 1, T, T_keys) with document_mask: same document
        if self.document_mask:
            pos, doc_mask = self._documents(idx, pos, caches, pad_mask)
        x = self.position.embed(self.wte(idx), pos)  # (B, T, C)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute and not caches:
                x = checkpoint(
                    block, x, self.position, pos, None, pad_mask, doc_mask, use_reentrant=False
                )
            else:
                cache = caches[i] if caches else None
                x = block(x, self.position, pos, cache, pad_mask, doc_mask)
        return self.ln_f(x)

    def _documents(self, idx, pos, caches, pad_mask):
        """Positions within documents (B, T), and which keys share each query's document
        (B, 1, T, T_keys), over the cached slots too."""
        B, T = idx.shape
        pos = pos.expand(B, T)
        all_idx, all_pos = idx, pos  # (B, T_keys)
        if caches:
            if caches[0].documents is None:
                caches[0].documents = DocumentSlots(B, caches[0].shape[2], idx.device)
            all_idx, all_pos = caches[0].documents.update(idx, pos)
        segments, doc_pos = documents(all_idx, all_pos, self.eot_id, pad_mask)
        return doc_pos[:, -T:], same_document(segments[:, -T:], segments)

    def _cross_entropy(self, logits, targets, reduction: str) -> torch.Tensor:
        # fp32 cross-entropy whatever the autocast dtype: bf16 log-softmax over 50k ids is lossy
        logits = logits.float().reshape(-1, self.vocab_size)
        return F.cross_entropy(logits, targets, reduction=reduction)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(x)[..., : self.vocab_size]  # padded ids never scored
        if self.logit_softcap is None:
            return logits
        cap = self.logit_softcap
        return cap * torch.tanh(logits.float() / cap)  # fp32: tanh saturates early in bf16

    def _head_loss_sum(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._cross_entropy(self._logits(x), targets, "sum")

    def _chunked_loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of (N, C) final states against (N,) targets, ``loss_chunk_size``
        rows at a time; each chunk's logits are recomputed in the backward pass, not kept."""
        total = x.new_zeros((), dtype=torch.float32)
        for start in range(0, x.size(0), self.loss_chunk_size):
            rows = slice(start, start + self.loss_chunk_size)
            total = total + checkpoint(
                self._head_loss_sum, x[rows], targets[rows], use_reentrant=False
            )
        return total / _counted(targets)

    def new_caches(self, batch: int, max_len: int) -> list[KVCache]:
        """Empty key/value caches, one per block, for ``max_len`` slots."""
        return [block.attn.new_cache(batch, max_len) for block in self.blocks]

    def num_params(self, padding: bool = False) -> int:
        """Parameters, each counted once (a tied head adds none). Without ``padding``, the
        never-used rows that ``vocab_multiple`` adds are left out: GPT-2 small is 124,439,808."""
        total = sum(p.numel() for p in self.parameters())
        if padding:
            return total
        unused_rows = self.padded_vocab_size - self.vocab_size
        tables = 1 if self.lm_head.weight is self.wte.weight else 2
        return total - unused_rows * self.wte.embedding_dim * tables


def _counted(targets: torch.Tensor) -> torch.Tensor:
    """How many targets count (not -100), at least 1: the mean's denominator."""
    return (targets != -100).sum().clamp(min=1)
