"""CTR models composed from ``semrec.models.ctr.layers``; each maps categorical feature ids (B, F) over one
global vocabulary to a click logit (B,). DCN, DeepFM and FinalMLP also expose ``score(E)`` on field
embeddings (B, F, d) so that other inputs (token prefix sums in ``HMI``) can drive them; built with
``n_features=0`` they have no id table. ``build_ctr(spec)`` builds one from a JSON-able spec (the
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
        self.embedding = FeatureEmbedding(n_features, embedding_dim) if n_features else None
        self.cross = CrossNet(d, cross_layers)
        self.dnn = MLP(d, list(hidden), dropout=dropout, batch_norm=batch_norm)
        self.out = nn.Linear(d + self.dnn.output_dim, 1)

    def score(self, e: torch.Tensor) -> torch.Tensor:
        x0 = e.flatten(1)
        return self.out(torch.cat([self.cross(x0), self.dnn(x0)], dim=1)).squeeze(1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.score(self.embedding(ids))


class DeepFM(nn.Module):
    def __init__(self, n_features: int, n_fields: int, embedding_dim: int = 10, hidden: list[int] = (400, 400, 400),
                 dropout: float = 0.1, batch_norm: bool = False):
        super().__init__()
        self.embedding = FeatureEmbedding(n_features, embedding_dim) if n_features else None
        self.lr = LR(n_features, n_fields) if n_features else None
        self.fm = FM()
        self.dnn = MLP(n_fields * embedding_dim, list(hidden), output_dim=1, dropout=dropout, batch_norm=batch_norm)

    def score(self, e: torch.Tensor) -> torch.Tensor:
        """FM + DNN on field embeddings (the first-order term needs feature ids: ``forward``)."""
        return self.fm(e).squeeze(1) + self.dnn(e.flatten(1)).squeeze(1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lr(ids) + self.score(self.embedding(ids))


class FinalMLP(nn.Module):
    def __init__(self, n_features: int, n_fields: int, embedding_dim: int = 10, mlp1: list[int] = (400, 400, 400),
                 mlp2: list[int] = (800,), dropout1: float = 0.2, dropout2: float = 0.2, gate_hidden: list[int] = (800,),
                 fusion_heads: int = 1, batch_norm: bool = False):
        super().__init__()
        d = n_fields * embedding_dim
        self.embedding = FeatureEmbedding(n_features, embedding_dim) if n_features else None
        self.gate1 = FeatureGating(d, embedding_dim, list(gate_hidden))
        self.gate2 = FeatureGating(d, embedding_dim, list(gate_hidden))
        self.mlp1 = MLP(d, list(mlp1), dropout=dropout1, batch_norm=batch_norm)
        self.mlp2 = MLP(d, list(mlp2), dropout=dropout2, batch_norm=batch_norm)
        self.fusion = BilinearFusion(self.mlp1.output_dim, self.mlp2.output_dim, fusion_heads)

    def score(self, e: torch.Tensor) -> torch.Tensor:
        flat = e.flatten(1)
        return self.fusion(self.mlp1(self.gate1(flat)), self.mlp2(self.gate2(flat))).squeeze(1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.score(self.embedding(ids))


MODELS = {"lr": LR, "dcn": DCN, "deepfm": DeepFM, "finalmlp": FinalMLP}


class HMI(nn.Module):
    """Hierarchical mixture inference (UIST §2.2) over user tokens (B, K_u) and item tokens (B, K_t).

    Token embeddings are summed coarse-to-fine (prefix sums, eq. 7); ``base`` (a DCN / DeepFM / FinalMLP
    built with ``n_features=0, n_fields=2``) scores user-item pairs of those prefix embeddings through its
    ``score`` and a linear layer mixes the pair scores (eq. 8). ``aggregation``: ``hmi`` every (i, j) pair;
    ``layer`` only same-level pairs (i, i); ``add`` one pair of the full sums (UIST Table 3)."""

    def __init__(self, base: nn.Module, user_sizes: list[int], item_sizes: list[int], dim: int,
                 aggregation: str = "hmi"):
        super().__init__()
        if not hasattr(base, "score"):
            raise ValueError(f"{type(base).__name__} has no score(field embeddings): HMI needs dcn, deepfm or finalmlp")
        if aggregation not in ("hmi", "layer", "add"):
            raise ValueError(f"aggregation must be hmi, layer or add, got {aggregation!r}")
        if aggregation == "layer" and len(user_sizes) != len(item_sizes):
            raise ValueError(f"layer aggregation pairs levels: {len(user_sizes)} user vs {len(item_sizes)} item levels")
        self.base, self.aggregation = base, aggregation
        self.user = nn.ModuleList(nn.Embedding(c, dim) for c in user_sizes)
        self.item = nn.ModuleList(nn.Embedding(c, dim) for c in item_sizes)
        for table in [*self.user, *self.item]:
            nn.init.normal_(table.weight, std=1e-4)
        ku, kt = len(user_sizes), len(item_sizes)
        self.pairs = {"hmi": [(i, j) for i in range(ku) for j in range(kt)],
                      "layer": [(i, i) for i in range(ku)], "add": [(ku - 1, kt - 1)]}[aggregation]
        self.mix = nn.Linear(len(self.pairs), 1)

    @staticmethod
    def prefix(tables: nn.ModuleList, codes: torch.Tensor) -> torch.Tensor:
        """(B, K, d): row i is the sum of the first i + 1 levels' token embeddings."""
        return torch.stack([t(codes[:, k]) for k, t in enumerate(tables)], dim=1).cumsum(dim=1)

    def pair_scores(self, user_codes: torch.Tensor, item_codes: torch.Tensor) -> torch.Tensor:
        eu, et = self.prefix(self.user, user_codes), self.prefix(self.item, item_codes)
        i, j = (torch.tensor(x, device=eu.device) for x in zip(*self.pairs))
        pairs = torch.stack([eu[:, i], et[:, j]], dim=2)  # (B, P, 2, d)
        b, p = pairs.shape[:2]
        return self.base.score(pairs.flatten(0, 1)).view(b, p)

    def forward(self, user_codes: torch.Tensor, item_codes: torch.Tensor) -> torch.Tensor:
        return self.mix(self.pair_scores(user_codes, item_codes)).squeeze(1)


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
