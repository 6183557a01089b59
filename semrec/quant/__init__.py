"""Quantizers: dense vectors -> discrete codes (fit / encode / decode / save / load)."""

from semrec.quant.base import Quantizer
from semrec.quant.pcakmeans import PCAKMeans
from semrec.quant.rkmeans import ResidualKMeans
from semrec.quant.rqvae import RQVAE

QUANTIZERS: dict[str, type[Quantizer]] = {q.kind: q for q in (RQVAE, ResidualKMeans, PCAKMeans)}


def load_quantizer(directory) -> Quantizer:
    return Quantizer.load(directory)


__all__ = ["Quantizer", "RQVAE", "ResidualKMeans", "PCAKMeans", "QUANTIZERS", "load_quantizer"]
