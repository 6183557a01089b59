"""PCA + per-position k-means: the clusterer of the single-LLM (STORE) method.

Input is (n, v, D) -- v dense vectors per item, e.g. the hidden states of v placeholder tokens --
or (n, D). With ``positions=v`` a 2-D input is read as v equal slices of each row. One PCA
(D -> pca_dim, fitted on all positions pooled) is shared; each position gets its own k-means
codebook, so an item's token sequence is one code per position.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from semrec.errors import InputError
from semrec.quant.base import Quantizer, as_float32
from semrec.quant.distances import DISTANCES
from semrec.quant.rqvae import kmeans_centroids


class PCAKMeans(Quantizer):
    kind = "pcakmeans"

    def __init__(self, pca_dim: int = 64, codebook_size: int = 256, positions: int = 1, niter: int = 20,
                 max_points_per_centroid: int = 256, seed: int = 0):
        super().__init__(pca_dim=pca_dim, codebook_size=codebook_size, positions=positions, niter=niter,
                         max_points_per_centroid=max_points_per_centroid, seed=seed)
        self.A = self.b = None
        self.centroids: np.ndarray | None = None  # (v, C, pca_dim)

    @property
    def codebook_sizes(self) -> list[int]:
        return [self.params["codebook_size"]] * self.fitted_.get("positions", self.params["positions"])

    @property
    def distance_names(self) -> list[str]:
        return ["euclidean"] * len(self.codebook_sizes)

    def _split(self, x: np.ndarray) -> np.ndarray:
        x = as_float32(x)
        if x.ndim == 3:
            return x
        v = self.params["positions"]
        if x.shape[1] % v:
            raise InputError(f"input dimension {x.shape[1]} is not divisible by positions={v}")
        return x.reshape(len(x), v, x.shape[1] // v)

    def _project(self, flat: np.ndarray) -> np.ndarray:
        return flat @ self.A.T + self.b

    def fit(self, x: np.ndarray) -> "PCAKMeans":
        xs = self._split(x)
        n, v, dim = xs.shape
        d = self.params["pca_dim"]
        if d > dim:
            raise InputError(f"pca_dim={d} exceeds the input dimension {dim}")
        pca = faiss.PCAMatrix(dim, d)
        pca.train(np.ascontiguousarray(xs.reshape(n * v, dim)))
        self.A = faiss.vector_to_array(pca.A).reshape(d, dim).astype(np.float32)
        self.b = faiss.vector_to_array(pca.b).astype(np.float32)
        y = self._project(xs.reshape(n * v, dim)).reshape(n, v, d)
        p = self.params
        self.centroids = np.stack([kmeans_centroids(y[:, j], p["codebook_size"], p["niter"], p["seed"] + j,
                                                    max_points_per_centroid=p["max_points_per_centroid"])
                                   for j in range(v)])
        self.fitted_ = {"input_dim": int(dim), "positions": int(v), "train_rows": int(n)}
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        self._check_fitted()
        xs = self._split(x)
        n, v, dim = xs.shape
        if v != self.fitted_["positions"] or dim != self.fitted_["input_dim"]:
            raise InputError(f"input has {v} positions x {dim} dims, quantizer was fitted on "
                             f"{self.fitted_['positions']} x {self.fitted_['input_dim']}")
        y = self._project(xs.reshape(n * v, dim)).reshape(n, v, -1)
        euclid = DISTANCES["euclidean"]
        return np.stack([euclid.search(y[:, j], self.centroids[j]) for j in range(v)], axis=1)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._check_fitted()
        codes = np.asarray(codes, dtype=np.int64)
        y = np.stack([self.centroids[j][codes[:, j]] for j in range(codes.shape[1])], axis=1)
        x = (y - self.b) @ self.A  # rows of A are orthonormal (no whitening)
        return x.reshape(len(codes), -1).astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pca.A": torch.from_numpy(self.A), "pca.b": torch.from_numpy(self.b),
                "centroids": torch.from_numpy(self.centroids)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.A, self.b, self.centroids = (state[k].numpy() for k in ("pca.A", "pca.b", "centroids"))
