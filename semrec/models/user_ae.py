"""The UIST user autoencoder (paper §2.1): a user's item sequence -> one vector z -> the sequence again.

- items enter as their item-tokenizer representation (``items``: any module mapping item ids to
  vectors, e.g. ``SemanticItems`` = the sum of the item's code embeddings, or fixed text embeddings),
  projected to ``hidden`` and given learned positions;
- H transformer encoder layers, then additive attention pools the sequence into z (B, hidden);
- a causal transformer decoder whose memory is z reconstructs the sequence autoregressively;
- the reconstruction target is each position's item *codes* (K classification heads of C_k classes),
  not the item id: a softmax over every item is O(N d) and cannot exist at 100M items, while K x C
  heads are a few thousand outputs whatever the catalogue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AdditiveAttention(nn.Module):
    """z = sum_i a_i x_i with a = softmax_i(q . tanh(W x_i + b)) over the non-padding positions."""

    def __init__(self, dim: int, attn_dim: int | None = None):
        super().__init__()
        self.proj = nn.Linear(dim, attn_dim or dim)
        self.query = nn.Linear(attn_dim or dim, 1, bias=False)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """x (B, L, d), pad (B, L) True at padding -> (B, d)."""
        scores = self.query(torch.tanh(self.proj(x))).squeeze(-1).masked_fill(pad, float("-inf"))
        return torch.einsum("bl,bld->bd", torch.softmax(scores, dim=1), x)


class UserAutoencoder(nn.Module):
    def __init__(self, items: nn.Module, item_dim: int, codebook_sizes: list[int], hidden: int = 64,
                 layers: int = 2, heads: int = 2, max_len: int = 50, dropout: float = 0.1):
        super().__init__()
        self.items, self.max_len, self.sizes = items, max_len, list(codebook_sizes)
        self.inp = nn.Linear(item_dim, hidden)
        self.pos = nn.Embedding(max_len, hidden)
        self.start = nn.Parameter(torch.zeros(hidden))
        enc = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout, batch_first=True, norm_first=True)
        dec = nn.TransformerDecoderLayer(hidden, heads, 4 * hidden, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(enc, layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, layers)
        self.pool = AdditiveAttention(hidden)
        self.norm = nn.LayerNorm(hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, c) for c in self.sizes)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inp(self.items(ids)) + self.pos(torch.arange(ids.shape[1], device=ids.device))

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) item ids, left-padded with 0 (at least one item per row) -> z (B, hidden)."""
        pad = ids == 0
        if pad.all(dim=1).any():
            raise ValueError(f"row {int(pad.all(dim=1).nonzero()[0, 0])} has no items: a user needs at least one")
        h = self.encoder(self._embed(ids), src_key_padding_mask=pad)
        return self.norm(self.pool(h, pad))

    def decode(self, ids: torch.Tensor, z: torch.Tensor) -> list[torch.Tensor]:
        """Per-level code logits (B, L, C_k) for every position, each predicted from z and the items before it."""
        x = self._embed(ids)
        shifted = torch.cat([self.start.expand(x.shape[0], 1, -1), x[:, :-1]], dim=1)  # teacher forcing
        causal = nn.Transformer.generate_square_subsequent_mask(ids.shape[1], device=ids.device)
        d = self.decoder(shifted, z[:, None, :], tgt_mask=causal, tgt_is_causal=True)
        return [head(d) for head in self.heads]

    def forward(self, ids: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean code cross-entropy over non-padding positions and levels, code accuracy); ``codes`` (B, L, K)."""
        z = self.encode(ids)
        logits = self.decode(ids, z)
        keep = ids > 0
        loss = sum(F.cross_entropy(lg[keep], codes[..., k][keep]) for k, lg in enumerate(logits)) / len(logits)
        with torch.no_grad():
            acc = torch.stack([(lg[keep].argmax(-1) == codes[..., k][keep]).float().mean()
                               for k, lg in enumerate(logits)]).mean()
        return loss, acc
