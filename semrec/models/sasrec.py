"""SASRec (Kang & McAuley 2018) as in S3-Rec's fine-tuning: learned positions, post-LN transformer
blocks with GELU feed-forward (4x hidden), causal + padding attention mask, BCE with one sampled
negative per position. The item representation is a pluggable module (see item_repr.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semrec.models.layers import Dropout, TransformerBlock


class SASRec(nn.Module):
    def __init__(self, items: nn.Module, hidden: int = 64, layers: int = 2, heads: int = 2, max_len: int = 50,
                 dropout: float = 0.5, init_range: float = 0.02):
        super().__init__()
        self.items = items
        self.max_len = max_len
        self.heads = heads
        self.pos = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.drop = Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(hidden, heads, dropout) for _ in range(layers))
        self.apply(lambda m: self._init(m, init_range))

    @staticmethod
    def _init(m: nn.Module, r: float) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.data.normal_(0.0, r)
        if isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.data.zero_()
        if isinstance(m, nn.LayerNorm):
            m.bias.data.zero_()
            m.weight.data.fill_(1.0)

    def attention_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """Additive (B, 1, L, L) mask: position t attends to non-padding positions <= t, and to itself
        (so padding rows, whose outputs are never used, still attend to nothing later). -1e4, as in S3-Rec."""
        b, length = ids.shape
        causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=ids.device)
        allowed = (causal[None] & (ids > 0)[:, None, :]) | eye[None]
        return torch.zeros(b, 1, length, length, device=ids.device).masked_fill(~allowed[:, None], -1e4)

    def encode(self, ids: torch.Tensor, item_vecs: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        x = self.drop(self.norm(item_vecs + self.pos(positions)))
        mask = self.attention_mask(ids)
        for block in self.blocks:
            x = block(x, mask)
        return x

    def forward(self, ids: torch.Tensor, pos: torch.Tensor | None = None,
                neg: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, L) left-padded -> (B, L, hidden) states; with ``pos``/``neg`` targets -> the training loss
        (so DistributedDataParallel sees the loss computation as the module's forward)."""
        if pos is not None:
            return self.loss(ids, pos, neg)
        return self.encode(ids, self.items(ids))

    def loss(self, ids: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """BCE of the next item vs one sampled negative at every non-padding position, plus the item
        module's auxiliary loss (joint RQ-VAE) computed once over the batch's items."""
        vecs = self.items(torch.stack([ids, pos, neg]))
        h = self.encode(ids, vecs[0])
        pos_logit = (h * vecs[1]).sum(-1)
        neg_logit = (h * vecs[2]).sum(-1)
        mask = (pos > 0).float()
        bce = (F.softplus(-pos_logit) + F.softplus(neg_logit)) * mask
        loss = bce.sum() / mask.sum().clamp_min(1)
        if self.items.aux_loss is not None:
            loss = loss + self.items.aux_loss
        return loss

    @torch.no_grad()
    def user_states(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward(ids)[:, -1]

    @torch.no_grad()
    def score(self, ids: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """(B, L) histories, (B, C) candidate ids -> (B, C) scores."""
        u = self.user_states(ids)
        return (self.items(candidates) * u[:, None]).sum(-1)

    @torch.no_grad()
    def score_all(self, ids: torch.Tensor) -> torch.Tensor:
        return self.user_states(ids) @ self.items.all_items().T
