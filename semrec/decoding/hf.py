"""The code trie as a constraint for any Hugging Face model's ``generate``.

Code tokens live in the model's vocabulary as one block per level: the token of code c at level l is
``CodeVocab.token(l, c) = offset + sum(sizes[:l]) + c`` (the ids the code tokens were added with). Generation
starts after a prompt of ``prompt_len`` tokens (left-padded batches share it); the t-th generated token is
level t. Two equivalent hooks:

- ``TrieLogitsProcessor`` (pass in ``logits_processor=[...]``): vectorised over the batch x beams rows;
- ``prefix_allowed_tokens_fn(...)`` (pass as ``prefix_allowed_tokens_fn=``): the per-row callback form.

After the last level only ``eos_token_id`` is allowed (when given), so ``max_new_tokens`` may exceed the levels.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import LogitsProcessor

from semrec.decoding.trie import CodeTrie


class CodeVocab:
    def __init__(self, sizes: list[int], offset: int):
        self.sizes, self.offset = [int(s) for s in sizes], int(offset)
        self.bases = offset + np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.size = int(sum(self.sizes))

    def token(self, level: int, codes) -> np.ndarray:
        return self.bases[level] + np.asarray(codes, dtype=np.int64)

    def codes(self, tokens: np.ndarray) -> np.ndarray:
        """(M, t) generated tokens -> their codes (M, t); -1 for a token outside its level's block."""
        tokens = np.asarray(tokens, dtype=np.int64)
        out = np.full(tokens.shape, -1, dtype=np.int64)
        for level in range(min(tokens.shape[1], len(self.sizes))):
            c = tokens[:, level] - self.bases[level]
            out[:, level] = np.where((c >= 0) & (c < self.sizes[level]), c, -1)
        return out


def _allowed(trie: CodeTrie, vocab: CodeVocab, generated: np.ndarray, eos: int | None):
    """(row index, allowed token) pairs for each row of ``generated`` (M, t)."""
    m, t = generated.shape
    if t >= trie.levels:
        rows = np.arange(m) if eos is not None else np.zeros(0, dtype=np.int64)
        return rows, np.full(len(rows), eos if eos is not None else 0, dtype=np.int64)
    codes = vocab.codes(generated)
    nodes = np.full(m, -1, dtype=np.int64)
    ok = (codes >= 0).all(1)
    nodes[ok] = trie.walk(codes[ok])
    live = np.flatnonzero(nodes >= 0)
    parent, child_codes, _ = trie.expand(nodes[live])
    return live[parent], vocab.token(t, child_codes)


class TrieLogitsProcessor(LogitsProcessor):
    """Sets every token that does not continue a real item's code sequence to -inf. A row whose prefix is
    already off the trie (it cannot happen under this processor) gets only -inf, i.e. is dropped."""

    def __init__(self, trie: CodeTrie, vocab: CodeVocab, prompt_len: int, eos_token_id: int | None = None):
        self.trie, self.vocab, self.prompt_len, self.eos = trie, vocab, int(prompt_len), eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_len:].cpu().numpy()
        rows, tokens = _allowed(self.trie, self.vocab, generated, self.eos)
        mask = torch.full_like(scores, float("-inf"))
        mask[torch.from_numpy(rows), torch.from_numpy(tokens)] = 0.0
        return scores + mask


def prefix_allowed_tokens_fn(trie: CodeTrie, vocab: CodeVocab, prompt_len: int, eos_token_id: int | None = None):
    """The ``generate(prefix_allowed_tokens_fn=...)`` form: (batch_id, input_ids of one row) -> allowed ids."""

    def fn(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        generated = input_ids[prompt_len:].cpu().numpy()[None]
        return _allowed(trie, vocab, generated, eos_token_id)[1].tolist()

    return fn
