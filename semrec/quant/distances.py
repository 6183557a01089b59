"""Codebook-search distances as small swappable objects.

Each distance has a plain-PyTorch reference (``scores``/``assign``, used in training and as the
ground truth in tests) and a faiss fast path (``search``) used for bulk encoding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import faiss
import numpy as np
import torch
import torch.nn.functional as F


class Distance(ABC):
    name: str

    @abstractmethod
    def scores(self, x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """(n, C) matrix; lower means nearer."""

    def assign(self, x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        return self.scores(x, codebook).argmin(dim=1)

    @abstractmethod
    def search(self, x: np.ndarray, codebook: np.ndarray) -> np.ndarray:
        """Nearest code per row with faiss (float32 inputs); returns int64 (n,)."""

    def __repr__(self) -> str:
        return self.name


class Euclidean(Distance):
    name = "euclidean"

    def scores(self, x, codebook):
        return (x.pow(2).sum(1, keepdim=True) - 2 * x @ codebook.T + codebook.pow(2).sum(1)[None, :])

    def search(self, x, codebook):
        index = faiss.IndexFlatL2(codebook.shape[1])
        index.add(np.ascontiguousarray(codebook, dtype=np.float32))
        return index.search(np.ascontiguousarray(x, dtype=np.float32), 1)[1][:, 0]


class Cosine(Distance):
    name = "cosine"

    def scores(self, x, codebook):
        return -(F.normalize(x, dim=1) @ F.normalize(codebook, dim=1).T)

    def search(self, x, codebook):
        cb = np.ascontiguousarray(codebook, dtype=np.float32).copy()
        faiss.normalize_L2(cb)
        q = np.ascontiguousarray(x, dtype=np.float32).copy()
        faiss.normalize_L2(q)
        index = faiss.IndexFlatIP(cb.shape[1])
        index.add(cb)
        return index.search(q, 1)[1][:, 0]


DISTANCES: dict[str, Distance] = {d.name: d for d in (Euclidean(), Cosine())}

# Named presets: "hybrid" is the unified semantic+ID method's choice (cosine on every level
# but the last, Euclidean on the last).
PRESETS = ("euclidean", "cosine", "hybrid")


def resolve_distances(spec: str | list[str], levels: int) -> list[Distance]:
    if isinstance(spec, str):
        if spec == "hybrid":
            names = ["cosine"] * (levels - 1) + ["euclidean"]
        elif spec in DISTANCES:
            names = [spec] * levels
        else:
            raise ValueError(f"unknown distance '{spec}': use one of {', '.join(PRESETS)} or a list per level")
    else:
        names = list(spec)
        if len(names) != levels:
            raise ValueError(f"distance list has {len(names)} entries for {levels} levels")
    for n in names:
        if n not in DISTANCES:
            raise ValueError(f"unknown distance '{n}': use one of {', '.join(DISTANCES)}")
    return [DISTANCES[n] for n in names]
