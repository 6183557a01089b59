"""The UIST user autoencoder (paper §2.1): a user's item sequence -> one vector z -> the sequence again.

- items enter as their item-tokenizer representation (``items``: any module mapping item ids to
  vectors, e.g. ``SemanticItems`` = the sum of the item's code embeddings, or fixed text embeddings),
  projected to ``hidden`` and given learned positions;
- H transformer encoder layers, then additive attention pools the sequence into z (B, hidden);
- a causal transformer decoder whose memory is z reconstructs the sequence autoregressively;
- the reconstruction target is each position's item *codes* (K classification heads of C_k classes),
  not the item id: a softmax over every item is O(N d) and cannot exist at 100M items, while K x C
  heads are a few thousand outputs whatever the catalogue (``target="items"`` keeps the paper's
  item-id softmax for the comparison on small catalogues).
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


class TextItems(nn.Module):
    """Fixed item vectors (e.g. the item tokenizer's text embeddings), row 0 = padding; not trained."""

    def __init__(self, vectors: torch.Tensor):
        super().__init__()
        self.register_buffer("vectors", vectors.float())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.vectors[ids] * (ids > 0).unsqueeze(-1)


class SequenceEncoder(nn.Module):
    """Items (via ``items``, any id -> vector module) -> projection + learned positions -> H transformer
    encoder layers -> additive attention over the non-padding positions -> LayerNorm: one vector per user.
    The encoder half of the user autoencoder, and the CTR paradigms' online user encoder (UIST (f))."""

    def __init__(self, items: nn.Module, item_dim: int, hidden: int = 64, layers: int = 2, heads: int = 2,
                 max_len: int = 50, dropout: float = 0.1):
        super().__init__()
        self.items, self.max_len = items, max_len
        self.inp = nn.Linear(item_dim, hidden)
        self.pos = nn.Embedding(max_len, hidden)
        enc = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(enc, layers, enable_nested_tensor=False)
        self.pool = AdditiveAttention(hidden)
        self.norm = nn.LayerNorm(hidden)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inp(self.items(ids)) + self.pos(torch.arange(ids.shape[1], device=ids.device))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) item ids, left-padded with 0 (at least one item per row) -> (B, hidden)."""
        pad = ids == 0
        if pad.all(dim=1).any():
            raise ValueError(f"row {int(pad.all(dim=1).nonzero()[0, 0])} has no items: a user needs at least one")
        return self.norm(self.pool(self.encoder(self.embed(ids), src_key_padding_mask=pad), pad))


class UserAutoencoder(nn.Module):
    """``target_sizes``: classes of each reconstruction head; the codebook sizes of the item codes (the
    scalable target), or ``[n_items + 1]`` for the paper's item-id softmax (small catalogues only)."""

    def __init__(self, items: nn.Module, item_dim: int, target_sizes: list[int], hidden: int = 64,
                 layers: int = 2, heads: int = 2, max_len: int = 50, dropout: float = 0.1):
        super().__init__()
        self.max_len, self.sizes = max_len, list(target_sizes)
        self.seq = SequenceEncoder(items, item_dim, hidden, layers, heads, max_len, dropout)
        self.start = nn.Parameter(torch.zeros(hidden))
        dec = nn.TransformerDecoderLayer(hidden, heads, 4 * hidden, dropout, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(dec, layers)
        self.heads = nn.ModuleList(nn.Linear(hidden, c) for c in self.sizes)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) item ids, left-padded with 0 (at least one item per row) -> z (B, hidden)."""
        return self.seq(ids)

    def decode(self, ids: torch.Tensor, z: torch.Tensor) -> list[torch.Tensor]:
        """Per-head logits (B, L, C_k) for every position, each predicted from z and the items before it."""
        x = self.seq.embed(ids)
        shifted = torch.cat([self.start.expand(x.shape[0], 1, -1), x[:, :-1]], dim=1)  # teacher forcing
        causal = nn.Transformer.generate_square_subsequent_mask(ids.shape[1], device=ids.device)
        d = self.decoder(shifted, z[:, None, :], tgt_mask=causal, tgt_is_causal=True)
        return [head(d) for head in self.heads]

    def forward(self, ids: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy of the reconstruction, averaged over heads, then the mean (or sum) over the
        non-padding positions; ``targets`` (B, L, heads): each position's item codes (or item id)."""
        logits = self.decode(ids, self.encode(ids))
        keep = ids > 0
        per_pos = sum(F.cross_entropy(lg[keep], targets[..., k][keep], reduction="none")
                      for k, lg in enumerate(logits)) / len(logits)
        return per_pos.sum() if reduction == "sum" else per_pos.mean()

    @torch.no_grad()
    def reconstruction(self, ids: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Sums over non-padding positions: ``head_correct`` (share of heads right), ``exact`` (every head
        right: the item recovered, up to items sharing a code tuple), ``loss``; and ``count``."""
        logits = self.decode(ids, self.encode(ids))
        keep = ids > 0
        right = torch.stack([lg[keep].argmax(-1) == targets[..., k][keep] for k, lg in enumerate(logits)], dim=1)
        loss = sum(F.cross_entropy(lg[keep], targets[..., k][keep], reduction="sum")
                   for k, lg in enumerate(logits)) / len(logits)
        return {"head_correct": float(right.float().mean(dim=1).sum()), "exact": float(right.all(dim=1).sum()),
                "loss": float(loss), "count": int(keep.sum())}


def build_user_autoencoder(spec: dict, codes: torch.Tensor | None = None,
                           text: torch.Tensor | None = None) -> UserAutoencoder:
    """From a JSON-able spec: ``n_items``, ``item_repr`` (codes | text), ``codebook_sizes`` (of the item codes),
    ``target`` (codes | items), ``item_dim`` (code-embedding width; the text width for text), ``hidden``,
    ``layers``, ``heads``, ``max_len``, ``dropout``. ``codes`` (n_items + 1, K) / ``text`` (n_items + 1, D):
    the per-item inputs (loaded from the saved weights when omitted)."""
    from semrec.models.item_repr import SemanticItems

    n, sizes = spec["n_items"], list(spec["codebook_sizes"])
    if spec["item_repr"] == "codes":
        codes = codes if codes is not None else torch.zeros(n + 1, len(sizes), dtype=torch.long)
        items, item_dim = SemanticItems(codes, sizes, spec["item_dim"]), spec["item_dim"]
    elif spec["item_repr"] == "text":
        text = text if text is not None else torch.zeros(n + 1, spec["item_dim"])
        items, item_dim = TextItems(text), int(text.shape[1])
    else:
        raise ValueError(f"item_repr must be codes or text, got {spec['item_repr']!r}")
    targets = sizes if spec["target"] == "codes" else [n + 1]
    model = UserAutoencoder(items, item_dim, targets, hidden=spec["hidden"], layers=spec["layers"],
                            heads=spec["heads"], max_len=spec["max_len"], dropout=spec["dropout"])
    model.config = dict(spec)
    return model


def save_pretrained(model: UserAutoencoder, directory, state: dict | None = None):
    from semrec.models import artefact

    return artefact.save_pretrained(model, directory, "UserAutoencoder", state)


def from_pretrained(directory, device: str = "cpu") -> UserAutoencoder:
    """A user encoder saved by ``tokenize_users`` (``<output>/user_encoder``), in eval mode."""
    from semrec.models import artefact

    return artefact.from_pretrained(directory, "UserAutoencoder", build_user_autoencoder, device)
