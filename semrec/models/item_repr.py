"""Item representations for sequential models, one per mode of the unified semantic+ID method.

Each module maps item ids (0 = padding) to d-dimensional vectors and exposes ``all_items()`` for
scoring every item. ``aux_loss`` holds the extra loss of the last forward (joint mode).

- ``id``: an ID embedding table (n_items + 1) x d.
- ``semantic``: the sum of per-level code embeddings read from a token table (L x C x d).
- ``unified``: concat(semantic part of width d - id_dim, ID part of width id_dim).
- ``joint``: like ``unified``, but the semantic part is the RQ-VAE's quantized latent of the item's
  text embedding, and the RQ-VAE (encoder, codebooks, decoder) trains together with the recommender:
  loss = L_rec + L_rqvae + L_recon (paper Algorithm 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semrec.quant.distances import Distance
from semrec.quant.rqvae import RQVAEModule


class IDItems(nn.Module):
    def __init__(self, n_items: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.aux_loss = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb(ids)

    def all_items(self) -> torch.Tensor:
        return self.emb.weight


class SemanticItems(nn.Module):
    """codes: (n_items + 1, L) long tensor (row 0 = padding), code embeddings summed over levels."""

    def __init__(self, codes: torch.Tensor, codebook_sizes: list[int], dim: int):
        super().__init__()
        self.register_buffer("codes", codes.long())
        offsets = torch.tensor([0, *torch.tensor(codebook_sizes).cumsum(0)[:-1].tolist()])
        self.register_buffer("offsets", offsets)
        self.emb = nn.Embedding(int(sum(codebook_sizes)), dim)
        self.aux_loss = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.emb(self.codes[ids] + self.offsets).sum(-2)
        return out * (ids > 0).unsqueeze(-1)

    def all_items(self) -> torch.Tensor:
        return self.forward(torch.arange(self.codes.shape[0], device=self.codes.device))


class UnifiedItems(nn.Module):
    def __init__(self, semantic: nn.Module, n_items: int, id_dim: int):
        super().__init__()
        self.semantic = semantic
        self.ids = nn.Embedding(n_items + 1, id_dim, padding_idx=0) if id_dim else None
        self.aux_loss = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        sem = self.semantic(ids)
        self.aux_loss = getattr(self.semantic, "aux_loss", None)
        return torch.cat([sem, self.ids(ids)], dim=-1) if self.ids is not None else sem

    def all_items(self) -> torch.Tensor:
        sem = self.semantic.all_items()
        return torch.cat([sem, self.ids.weight], dim=-1) if self.ids is not None else sem


class JointSemanticItems(nn.Module):
    """Quantized RQ-VAE latent of each item's text embedding (straight-through), trained jointly."""

    def __init__(self, text_emb: torch.Tensor, rqvae: RQVAEModule, distances: list[Distance], dim: int,
                 beta: float = 0.25):
        super().__init__()
        self.register_buffer("text", text_emb.float())  # (n_items + 1, D); row 0 unused
        self.rqvae = rqvae
        self.distances = distances
        latent = rqvae.codebooks[0].shape[1]
        self.proj = nn.Identity() if latent == dim else nn.Linear(latent, dim, bias=False)
        self.beta = beta
        self.aux_loss = None

    def _quantize(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        uniq, inverse = torch.unique(flat, return_inverse=True)
        x = self.rqvae.standardize(self.text[uniq])
        z = self.rqvae.encoder(x)
        z_q, _, cb_loss, commit, _ = self.rqvae.quantize(z, self.distances)
        recon = F.mse_loss(self.rqvae.decoder(z_q), x)
        self.aux_loss = cb_loss + self.beta * commit + recon
        out = self.proj(z_q)[inverse].reshape(*ids.shape, -1)
        return out * (ids > 0).unsqueeze(-1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self._quantize(ids)

    def all_items(self) -> torch.Tensor:
        return self._quantize(torch.arange(self.text.shape[0], device=self.text.device))

    @torch.no_grad()
    def codes(self) -> torch.Tensor:
        z = self.rqvae.encoder(self.rqvae.standardize(self.text))
        return self.rqvae.quantize(z, self.distances)[1]
