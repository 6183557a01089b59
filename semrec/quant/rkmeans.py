"""Training-free residual k-means: faiss k-means per level on the previous level's residuals."""

from __future__ import annotations

import numpy as np
import torch

from semrec.quant.base import ResidualQuantizer, as_float32
from semrec.quant.distances import Cosine
from semrec.quant.residual import assign_fast, reconstruct
from semrec.quant.rqvae import kmeans_centroids


class ResidualKMeans(ResidualQuantizer):
    kind = "rkmeans"

    def __init__(self, levels: int = 3, codebook_size: int | list[int] = 256, distance: str | list[str] = "euclidean",
                 niter: int = 20, max_points_per_centroid: int = 256, seed: int = 0):
        super().__init__(levels, codebook_size, distance, niter=niter,
                         max_points_per_centroid=max_points_per_centroid, seed=seed)
        self.codebooks: list[np.ndarray] = []

    def fit(self, x: np.ndarray) -> "ResidualKMeans":
        r = as_float32(x).copy()
        p = self.params
        self.codebooks = []
        for level, (k, dist) in enumerate(zip(self.codebook_sizes, self.distances)):
            spherical = isinstance(dist, Cosine)
            cb = kmeans_centroids(r, k, p["niter"], p["seed"] + level, spherical, p["max_points_per_centroid"])
            idx = dist.search(r, cb)
            if spherical:  # cosine assigns by angle; the code vector is the members' mean so residuals shrink
                sums = np.zeros_like(cb)
                np.add.at(sums, idx, r)
                counts = np.bincount(idx, minlength=k)
                cb = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], cb).astype(np.float32)
            self.codebooks.append(cb)
            r -= cb[idx]
        self.fitted_ = {"input_dim": int(x.shape[1]), "train_rows": int(len(x))}
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return assign_fast(as_float32(x), self.codebooks, self.distances)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return reconstruct(np.asarray(codes, dtype=np.int64), self.codebooks)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"codebook.{i}": torch.from_numpy(cb) for i, cb in enumerate(self.codebooks)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.codebooks = [state[f"codebook.{i}"].numpy() for i in range(self.levels)]
