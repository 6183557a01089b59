"""Small composable CTR layers (FuxiCTR-style): every layer maps field embeddings ``E`` (B, F, d), or their
flattening (B, F*d), to a tensor; models in ``semrec.models.ctr.models`` compose them.

- ``FeatureEmbedding``: categorical feature ids (B, F) over one global vocabulary -> (B, F, d).
- ``MLP``: Linear -> (BatchNorm) -> activation -> dropout blocks, optional output layer.
- ``CrossNet``: DCN's cross layers x_{l+1} = x0 * (x_l . w_l) + b_l + x_l.
- ``FM``: factorization-machine second-order term 0.5 * sum_d((sum_f e)^2 - sum_f e^2) (O(F d));
  ``fm_pairwise`` is the plain sum over field pairs it must equal (tests/test_ctr_layers.py).
- ``FeatureGating``: FinalMLP's feature selection, gate = 2 * sigmoid(MLP(context)) on the flattened
  embeddings; context = a learned vector (no conditioning fields) or the given fields' embeddings.
- ``BilinearFusion``: FinalMLP's multi-head bilinear interaction aggregation of two streams,
  b + w1.o1 + w2.o2 + sum_h o1_h^T W_h o2_h.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureEmbedding(nn.Module):
    def __init__(self, n_features: int, dim: int, init_std: float = 1e-4):
        super().__init__()
        self.n_features, self.dim = n_features, dim
        self.table = nn.Embedding(n_features, dim)
        nn.init.normal_(self.table.weight, std=init_std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden: list[int], output_dim: int | None = None, dropout: float = 0.0,
                 batch_norm: bool = False, activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        layers: list[nn.Module] = []
        d = input_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation())
            if dropout:
                layers.append(nn.Dropout(dropout))
            d = h
        if output_dim is not None:
            layers.append(nn.Linear(d, output_dim))
            d = output_dim
        self.net, self.output_dim = nn.Sequential(*layers), d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CrossNet(nn.Module):
    def __init__(self, input_dim: int, layers: int):
        super().__init__()
        self.w = nn.ModuleList(nn.Linear(input_dim, 1, bias=False) for _ in range(layers))
        self.b = nn.ParameterList(nn.Parameter(torch.zeros(input_dim)) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.w, self.b):
            x = x0 * w(x) + b + x
        return x


class FM(nn.Module):
    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """(B, F, d) -> (B, 1)."""
        square_of_sum = e.sum(dim=1).pow(2)
        sum_of_square = e.pow(2).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=1, keepdim=True)


def fm_pairwise(e: torch.Tensor) -> torch.Tensor:
    """Reference: sum over field pairs i < j of <e_i, e_j>, (B, 1)."""
    f = e.shape[1]
    out = torch.zeros(e.shape[0], 1, dtype=e.dtype)
    for i in range(f):
        for j in range(i + 1, f):
            out[:, 0] += (e[:, i] * e[:, j]).sum(dim=1)
    return out


class FeatureGating(nn.Module):
    """flat * 2 * sigmoid(MLP(context)); without conditioning fields the context is a learned vector."""

    def __init__(self, input_dim: int, context_dim: int, hidden: list[int], learned_context: bool = True):
        super().__init__()
        self.context = nn.Parameter(torch.zeros(1, context_dim)) if learned_context else None
        self.gate = MLP(context_dim, hidden, output_dim=input_dim)

    def forward(self, flat: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        c = self.context.expand(flat.shape[0], -1) if context is None else context
        return flat * 2 * torch.sigmoid(self.gate(c))


class BilinearFusion(nn.Module):
    def __init__(self, dim1: int, dim2: int, heads: int = 1, output_dim: int = 1):
        super().__init__()
        if dim1 % heads or dim2 % heads:
            raise ValueError(f"stream widths {dim1}, {dim2} must be divisible by fusion heads {heads}")
        self.heads, self.h1, self.h2, self.out = heads, dim1 // heads, dim2 // heads, output_dim
        self.w1, self.w2 = nn.Linear(dim1, output_dim), nn.Linear(dim2, output_dim, bias=False)
        self.w12 = nn.Parameter(torch.empty(heads * self.h1 * self.h2, output_dim))
        nn.init.xavier_normal_(self.w12)

    def bilinear(self) -> torch.Tensor:
        """W as (heads, h1, out, h2): the bilinear term is sum_h o1_h^T W[h, :, k, :] o2_h for output k."""
        return self.w12.view(self.heads, self.h1, self.out, self.h2)

    def forward(self, o1: torch.Tensor, o2: torch.Tensor) -> torch.Tensor:
        b = o1.shape[0]
        w = self.w12.view(self.heads, self.h1, self.out * self.h2)
        t = torch.matmul(o1.view(b, self.heads, 1, self.h1), w).view(b, self.heads, self.out, self.h2)
        fused = torch.matmul(t, o2.view(b, self.heads, self.h2, 1)).squeeze(-1).sum(dim=1)  # never B x h1 x h2
        return self.w1(o1) + self.w2(o2) + fused
