"""CTR models composed from ``semrec.models.ctr.layers``; each maps categorical feature ids (B, F) over one
global vocabulary to a click logit (B,). ``build_ctr(spec)`` builds one from a JSON-able spec (the
``config.json`` of a saved model).

- ``LR``: logistic regression, sum of per-feature weights + bias (the floor).
- ``DCN`` (Wang et al. 2017): cross network and a DNN in parallel over the flattened embeddings,
  concatenated into a linear output.
- ``DeepFM`` (Guo et al. 2017): first-order weights + FM second-order term + DNN, summed.
- ``FinalMLP`` (Mao et al. 2023): two MLP streams, each behind a feature gate, fused by multi-head
  bilinear aggregation.
"""

from __future__ import annotations

import torch
from torch import nn

from semrec.models.ctr.layers import FM, MLP, BilinearFusion, CrossNet, FeatureEmbedding, FeatureGating


class LR(nn.Module):
    def __init__(self, n_features: int, n_fields: int):
        super().__init__()
        self.weights = FeatureEmbedding(n_features, 1)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weights(ids).sum(dim=(1, 2)) + self.bias


class DCN(nn.Module):
    def __init__(self, n_features: int, n_fields: int, embedding_dim: int = 10, hidden: list[int] = (400, 400, 400),
                 cross_layers: int = 3, dropout: float = 0.1, batch_norm: bool = False):
        super().__init__()
        d = n_fields * embedding_dim
        self.embedding = FeatureEmbedding(n_features, embedding_dim)
        self.cross = CrossNet(d, cross_layers)
        self.dnn = MLP(d, list(hidden), dropout=dropout, batch_norm=batch_norm)
        self.out = nn.Linear(d + self.dnn.output_dim, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x0 = self.embedding(ids).flatten(1)
        return self.out(torch.cat([self.cross(x0), self.dnn(x0)], dim=1)).squeeze(1)


class DeepFM(nn.Module):
    def __init__(self, n_features: int, n_fields: int, embedding_dim: int = 10, hidden: list[int] = (400, 400, 400),
                 dropout: float = 0.1, batch_norm: bool = False):
        super().__init__()
        self.embedding = FeatureEmbedding(n_features, embedding_dim)
        self.lr = LR(n_features, n_fields)
        self.fm = FM()
        self.dnn = MLP(n_fields * embedding_dim, list(hidden), output_dim=1, dropout=dropout, batch_norm=batch_norm)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embedding(ids)
        return self.lr(ids) + self.fm(e).squeeze(1) + self.dnn(e.flatten(1)).squeeze(1)


class FinalMLP(nn.Module):
    def __init__(self, n_features: int, n_fields: int, embedding_dim: int = 10, mlp1: list[int] = (400, 400, 400),
                 mlp2: list[int] = (800,), dropout1: float = 0.2, dropout2: float = 0.2, gate_hidden: list[int] = (800,),
                 fusion_heads: int = 1, batch_norm: bool = False):
        super().__init__()
        d = n_fields * embedding_dim
        self.embedding = FeatureEmbedding(n_features, embedding_dim)
        self.gate1 = FeatureGating(d, embedding_dim, list(gate_hidden))
        self.gate2 = FeatureGating(d, embedding_dim, list(gate_hidden))
        self.mlp1 = MLP(d, list(mlp1), dropout=dropout1, batch_norm=batch_norm)
        self.mlp2 = MLP(d, list(mlp2), dropout=dropout2, batch_norm=batch_norm)
        self.fusion = BilinearFusion(self.mlp1.output_dim, self.mlp2.output_dim, fusion_heads)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = self.embedding(ids).flatten(1)
        return self.fusion(self.mlp1(self.gate1(flat)), self.mlp2(self.gate2(flat))).squeeze(1)


MODELS = {"lr": LR, "dcn": DCN, "deepfm": DeepFM, "finalmlp": FinalMLP}


def build_ctr(spec: dict) -> nn.Module:
    """``spec``: {"model": one of MODELS, "n_features", "n_fields", and the model's keyword arguments}."""
    spec = dict(spec)
    name = spec.pop("model")
    if name not in MODELS:
        raise ValueError(f"unknown CTR model {name!r}: choose one of {sorted(MODELS)}")
    model = MODELS[name](**spec)
    model.config = {"model": name, **spec}
    return model


def save_pretrained(model: nn.Module, directory, state: dict | None = None):
    """``config.json`` (the build_ctr spec) + ``model.safetensors``."""
    from semrec.models import artefact

    return artefact.save_pretrained(model, directory, "CTR", state)


def from_pretrained(directory, device: str = "cpu") -> nn.Module:
    """A CTR model saved by ``train_ctr``, in eval mode: ``model(feature_ids)`` gives click logits."""
    from semrec.models import artefact

    return artefact.from_pretrained(directory, "CTR", build_ctr, device)
