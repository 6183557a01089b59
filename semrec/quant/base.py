"""Estimator-style quantizer base: fit / encode / decode / evaluate / save / load.

An artefact directory holds ``config.json`` (kind, constructor parameters, fitted shapes) and
``weights.safetensors``; loading never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from semrec.errors import InputError
from semrec.quant import metrics
from semrec.schemas import code_type

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


def as_float32(x: Any, what: str = "embeddings") -> np.ndarray:
    """Float32 C-contiguous copy-free view when possible; refuses NaN/inf naming the first bad row."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise InputError(f"{what}: expected a non-empty 2-D array, got shape {arr.shape}")
    bad = ~np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1)
    if bad.any():
        raise InputError(f"{what}: NaN or inf in row {int(np.argmax(bad))} ({int(bad.sum())} bad rows)")
    arr = np.ascontiguousarray(arr)
    return arr if arr.flags.writeable else arr.copy()


class Quantizer(ABC):
    kind: ClassVar[str]

    def __init__(self, **params: Any):
        self.params = params
        self.fitted_: dict[str, Any] = {}

    # --- estimator API -------------------------------------------------------------------
    @abstractmethod
    def fit(self, x: np.ndarray) -> "Quantizer": ...

    @abstractmethod
    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, L) int64 codes."""

    @abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n, D) float32 reconstruction of the input."""

    @property
    @abstractmethod
    def codebook_sizes(self) -> list[int]: ...

    @property
    @abstractmethod
    def distance_names(self) -> list[str]: ...

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    # --- shared ----------------------------------------------------------------------------
    @property
    def levels(self) -> int:
        return len(self.codebook_sizes)

    def _check_fitted(self) -> None:
        if not self.fitted_:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or load()")

    def evaluate(self, x: np.ndarray, codes: np.ndarray | None = None) -> dict:
        x = as_float32(x)
        codes = self.encode(x) if codes is None else codes
        return {
            "levels": metrics.level_stats(codes, self.codebook_sizes),
            "collisions": metrics.collision_stats(codes),
            "reconstruction_mse": metrics.reconstruction_mse(x.reshape(len(x), -1),
                                                             self.decode(codes).reshape(len(x), -1)),
        }

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": self.params, "fitted": self.fitted_,
                "codebook_sizes": self.codebook_sizes, "distances": self.distance_names}

    def save(self, directory: str | Path) -> Path:
        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(d / WEIGHTS_FILE))
        (d / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2, sort_keys=True) + "\n")
        return d

    def fingerprint(self) -> str:
        """Content hash of config + weights: the quantizer id stored in token-table metadata."""
        self._check_fitted()
        h = hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode())
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def code_dtypes(self) -> list:
        return [code_type(c) for c in self.codebook_sizes]

    @classmethod
    def load(cls, directory: str | Path) -> "Quantizer":
        d = Path(directory)
        try:
            cfg = json.loads((d / CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{d / CONFIG_FILE}: cannot read quantizer config ({e})") from None
        from semrec.quant import QUANTIZERS

        kind = cfg.get("kind")
        if kind not in QUANTIZERS:
            raise InputError(f"{d / CONFIG_FILE}: unknown quantizer kind {kind!r}")
        q = QUANTIZERS[kind](**cfg["params"])
        q.fitted_ = cfg["fitted"]
        q.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
        return q


class ResidualQuantizer(Quantizer):
    """Shared parts of the residual quantizers: one codebook size and one distance per level."""

    def __init__(self, levels: int, codebook_size: int | list[int], distance, **params: Any):
        from semrec.quant.distances import resolve_distances

        sizes = [codebook_size] * levels if isinstance(codebook_size, int) else list(codebook_size)
        if len(sizes) != levels:
            raise ValueError(f"codebook_size has {len(sizes)} entries for {levels} levels")
        super().__init__(levels=levels, codebook_size=sizes, distance=distance, **params)
        self.distances = resolve_distances(distance, levels)

    @property
    def codebook_sizes(self) -> list[int]:
        return list(self.params["codebook_size"])

    @property
    def distance_names(self) -> list[str]:
        return [d.name for d in self.distances]
