"""SASRec (Kang & McAuley 2018) as in S3-Rec's fine-tuning: learned positions, post-LN transformer
blocks with GELU feed-forward (4x hidden), causal + padding attention mask, BCE with one sampled
negative per position. The item representation is a pluggable module (see item_repr.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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

    def forward(self, ids: torch.Tensor, pos: torch.Tensor | None = None, neg: torch.Tensor | None = None,
                reduction: str = "mean") -> torch.Tensor:
        """ids (B, L) left-padded -> (B, L, hidden) states; with ``pos``/``neg`` targets -> the training loss
        (so DistributedDataParallel sees the loss computation as the module's forward)."""
        if pos is not None:
            return self.loss(ids, pos, neg, reduction)
        return self.encode(ids, self.items(ids))

    def loss(self, ids: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """BCE of the next item vs one sampled negative at every non-padding position, plus the item
        module's auxiliary loss (joint RQ-VAE) computed once over the batch's items. ``reduction="sum"``
        gives the sum over positions (the auxiliary loss weighted by the number of positions), which the
        training engine divides by the global count of a step."""
        vecs = self.items(torch.stack([ids, pos, neg]))
        h = self.encode(ids, vecs[0])
        pos_logit = (h * vecs[1]).sum(-1)
        neg_logit = (h * vecs[2]).sum(-1)
        mask = (pos > 0).float()
        bce = ((F.softplus(-pos_logit) + F.softplus(neg_logit)) * mask).sum()
        n = mask.sum()
        if reduction == "sum":
            if self.items.aux_loss is not None and n > 0:  # an empty batch has no auxiliary loss (its mean is NaN)
                bce = bce + self.items.aux_loss * n
            return bce
        loss = bce / n.clamp_min(1)
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

    def recommend(self, histories: list[list[int]], k: int = 10, exclude_seen: bool = True,
                   block: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (item ids, scores) for each history (oldest item first), seen items excluded by default;
        streams over item blocks, so any catalogue size fits in memory."""
        from semrec.eval.metrics import stream_full_ranking

        ids = torch.zeros(len(histories), self.max_len, dtype=torch.long)
        for row, h in enumerate(histories):
            h = list(h)[-self.max_len:]
            if h:
                ids[row, self.max_len - len(h):] = torch.as_tensor(h, dtype=torch.long)
        device = next(self.parameters()).device
        was = self.training
        self.eval()
        with torch.no_grad():
            seen = [np.asarray(h, dtype=np.int64) if exclude_seen else np.zeros(0, np.int64) for h in histories]
            _, top_i, top_s = stream_full_ranking(self.user_states(ids.to(device)), self.items, self.config["n_items"],
                                                  None, seen, k=k, block=block)
        self.train(was)
        return top_i, top_s


# ----------------------------------------------------------------------------- artefacts


def build_sasrec(spec: dict, codes: torch.Tensor | None = None, text: torch.Tensor | None = None,
                 rqvae=None) -> SASRec:
    """SASRec from its config ``spec`` (what ``config.json`` holds). Per-item tensors (token ``codes``,
    ``text`` embeddings) and the joint mode's RQ-VAE module are given when training, and left as
    placeholders to be filled by ``load_state_dict`` when loading a saved model."""
    from semrec.models.item_repr import IDItems, JointSemanticItems, SemanticItems, UnifiedItems

    n, d, mode = spec["n_items"], spec["hidden"], spec["mode"]
    sizes = spec.get("codebook_sizes")
    if mode == "id":
        items: nn.Module = IDItems(n, d)
    elif mode in ("semantic", "unified"):
        codes = codes if codes is not None else torch.zeros(n + 1, len(sizes), dtype=torch.long)
        width = d if mode == "semantic" else d - spec["id_dim"]
        items = SemanticItems(codes, sizes, width)
        if mode == "unified":
            items = UnifiedItems(items, n, spec["id_dim"])
    elif mode == "joint":
        from semrec.quant.distances import resolve_distances
        from semrec.quant.rqvae import RQVAEModule

        if rqvae is None:
            rqvae = RQVAEModule(spec["text_dim"], spec["rqvae_hidden"], spec["latent_dim"], sizes)
        text = text if text is not None else torch.zeros(n + 1, spec["text_dim"])
        joint = JointSemanticItems(text, rqvae, resolve_distances(spec["distances"], len(sizes)),
                                   d - spec["id_dim"], beta=spec["beta"])
        items = UnifiedItems(joint, n, spec["id_dim"])
    else:
        raise ValueError(f"unknown SASRec item mode {mode!r}")
    model = SASRec(items, hidden=d, layers=spec["layers"], heads=spec["heads"], max_len=spec["max_len"],
                   dropout=spec["dropout"])
    model.config = dict(spec)
    return model


def save_pretrained(model: SASRec, directory: str | Path, state: dict | None = None) -> Path:
    """``config.json`` (architecture, n_items, dimensions, item mode; no data paths) + ``model.safetensors``
    (weights and per-item buffers such as token codes, stored once)."""
    from semrec.models import artefact

    return artefact.save_pretrained(model, directory, "SASRec", state)


def from_pretrained(directory: str | Path, device: str = "cpu") -> SASRec:
    """Load a model saved by ``train_seqrec`` (or ``save_pretrained``), in eval mode; no pickle involved."""
    from semrec.models import artefact

    return artefact.from_pretrained(directory, "SASRec", build_sasrec, device)
