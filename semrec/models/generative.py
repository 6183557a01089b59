"""A TIGER-style generative recommender: an encoder-decoder transformer over semantic-ID tokens.

The encoder reads the user's history as code tokens (each item = its L codes: c0..c{K-1} + collision suffix;
token embedding per (level, code), plus a level embedding and an item-position embedding); the decoder emits
the next item's L codes, one per step, from a BOS token, with one output head per level (its codebook). The
choice of an encoder-decoder (TIGER's) over a decoder-only model: the history is encoded once per user and
every beam of the search only runs the decoder over <= L tokens against that memory, so full-catalogue
decoding costs a few small decoder passes per user and needs no KV cache.

``forward(history, target)`` -> the summed cross-entropy of the target's L codes (teacher forcing);
``encode`` + ``next_logp`` are what ``semrec.decoding.beam_search`` drives.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class GenerativeRetrieval(nn.Module):
    def __init__(self, sizes: list[int], dim: int = 128, heads: int = 4, encoder_layers: int = 2,
                 decoder_layers: int = 2, ffn: int = 512, dropout: float = 0.1, max_items: int = 20):
        super().__init__()
        self.sizes, self.levels, self.max_items = [int(s) for s in sizes], len(sizes), max_items
        self.register_buffer("offsets", torch.tensor([0, *torch.tensor(self.sizes).cumsum(0)[:-1].tolist()]))
        self.bos = int(sum(self.sizes))
        self.tok = nn.Embedding(self.bos + 1, dim)
        self.level = nn.Embedding(self.levels, dim)
        self.pos = nn.Embedding(max_items, dim)
        enc = nn.TransformerEncoderLayer(dim, heads, ffn, dropout, batch_first=True, norm_first=True)
        dec = nn.TransformerDecoderLayer(dim, heads, ffn, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(enc, encoder_layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, decoder_layers, norm=nn.LayerNorm(dim))
        self.heads = nn.ModuleList(nn.Linear(dim, s) for s in self.sizes)

    def encode(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """history (B, T, L) codes, left-padded with -1 rows (T <= max_items) -> memory (B, T*L, d) and its
        padding mask (B, T*L), True = padding."""
        b, t, levels = history.shape
        valid = history[..., 0] >= 0  # (B, T)
        if not valid.any(1).all():
            raise ValueError(f"row {int((~valid.any(1)).nonzero()[0, 0])} has an empty history")
        tokens = torch.where(valid[..., None], history + self.offsets, 0)
        x = self.tok(tokens) + self.level.weight[None, None] + self.pos.weight[self.max_items - t:][None, :, None]
        pad = (~valid)[..., None].expand(b, t, levels).reshape(b, t * levels)
        return self.encoder(x.reshape(b, t * levels, -1), src_key_padding_mask=pad), pad

    def _decode(self, memory: torch.Tensor, pad: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Decoder states (M, l + 1, d) for BOS + ``prefix`` (M, l) codes."""
        m, length = prefix.shape
        tokens = torch.cat([torch.full((m, 1), self.bos, dtype=torch.long, device=prefix.device),
                            prefix + self.offsets[:length]], dim=1)
        x = self.tok(tokens) + self.level.weight[:length + 1]
        causal = nn.Transformer.generate_square_subsequent_mask(length + 1, device=prefix.device)
        return self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=pad)

    def forward(self, history: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of ``target`` (B, L) codes given ``history`` (B, T, L)."""
        memory, pad = self.encode(history)
        h = self._decode(memory, pad, target[:, :-1])  # (B, L, d): position l predicts code l
        return sum(F.cross_entropy(self.heads[lv](h[:, lv]), target[:, lv], reduction="sum")
                   for lv in range(self.levels))

    def next_logp(self, memory: torch.Tensor, pad: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """(M, sizes[l]) log-probabilities of code l = prefix.shape[1] for each row's memory."""
        level = prefix.shape[1]
        return F.log_softmax(self.heads[level](self._decode(memory, pad, prefix)[:, -1]), dim=-1)


def build_generative(spec: dict) -> GenerativeRetrieval:
    model = GenerativeRetrieval(spec["sizes"], spec["dim"], spec["heads"], spec["encoder_layers"],
                                spec["decoder_layers"], spec["ffn"], spec["dropout"], spec["max_items"])
    model.config = dict(spec)
    return model


def save_pretrained(model: GenerativeRetrieval, directory, state: dict | None = None):
    from semrec.models import artefact

    return artefact.save_pretrained(model, directory, "GenerativeRetrieval", state)


def from_pretrained(directory, device: str = "cpu") -> GenerativeRetrieval:
    from semrec.models import artefact

    return artefact.from_pretrained(directory, "GenerativeRetrieval", build_generative, device)
