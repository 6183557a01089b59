"""The generative-retrieval family (TIGER-style, ``semrec.models.generative``) on the shared training engine.

Data: a ``user_sequences`` table in memory and the item token table (codes + collision suffix = each item's L
tokens). Training examples are every (history, next item) pair of each user's training part s[:-2] (history =
the previous <= max_items items), in an order keyed by (seed, epoch), grouped by history length into batches
(``--train.group_by_length``: less padding, see ``length_grouped_batches``); global batch k is split over the
ranks.
Evaluation is leave-one-out over the **whole catalogue**: valid s[:-2] -> s[-2], test s[:-1] -> s[-1]; the
model decodes the next item's codes by beam search through the code trie (``semrec.decoding``), so only real
items, each once, are ranked; Recall@k / NDCG@k from the target's position in the beam (a target outside the
beam is a miss). The user's history is not excluded (TIGER's protocol).
"""

from __future__ import annotations

from functools import partial
import numpy as np
import torch

from semrec.data.seqbatch import left_pad, length_grouped_batches
from semrec.data.sequences import load_sequences
from semrec.data.tokens import load_token_codes
from semrec.decoding import CodeTrie, beam_search
from semrec.eval.metrics import metric_sums, ranks_in_list
from semrec.models.generative import build_generative

KS, NDCG_KS = (1, 5, 10, 20), (5, 10, 20)
# metrics with the user's earlier items dropped from the decoded list (the target always competes): the
# protocol of SASRec's full ranking (``stream_full_ranking``); the plain metrics are TIGER's (nothing dropped)
NOHIST = "nohist_"


def load_codes(tokens: str, n_items: int) -> tuple[np.ndarray, list[int], CodeTrie]:
    """(n_items + 1, L) codes with the suffix (row 0 unused), their sizes, and the trie over them (which refuses
    duplicate code sequences)."""
    codes, sizes = load_token_codes(tokens, n_items, use_suffix=True)
    trie = CodeTrie.build(np.arange(1, n_items + 1), codes[1:], sizes, source=f"{tokens}/token_table")
    return codes, sizes, trie


def model_spec(config: dict, sizes: list[int]) -> dict:
    m = config["model"]
    return {"sizes": sizes, "dim": m["dim"], "heads": m["heads"], "encoder_layers": m["encoder_layers"],
            "decoder_layers": m["decoder_layers"], "ffn": m["ffn"], "dropout": m["dropout"],
            "max_items": m["max_items"], "n_items": config["n_items"]}


def history_codes(codes: np.ndarray, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                  max_items: int) -> np.ndarray:
    """(E, T, L) codes of the last <= max_items items of each history, left-padded with -1; T is the longest
    history of the batch (at most max_items), so short histories do not pay for padding."""
    width = int(min(max_items, lengths.max())) if len(lengths) else 1
    ids = left_pad(flat, starts, lengths, width)
    return np.where(ids[..., None] > 0, codes[ids], -1)


def next_item_examples(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every training pair (user row, target position p) of leave-one-out: targets s[1:-2], history s[:p]."""
    n = np.maximum(np.asarray(lengths) - 3, 0)
    users = np.repeat(np.arange(len(n)), n)
    return users, 1 + np.arange(len(users)) - np.repeat(np.cumsum(n) - n, n)


class GenerativeFamily:
    metric = "NDCG@10"

    def __init__(self, config: dict):
        self.config, self.t = config, config["train"]
        self.n_items, self.max_items = config["n_items"], config["model"]["max_items"]
        self.beam = config["eval"]["beam"]
        self.seqs = load_sequences(config["sequences"], n_items=self.n_items).rows
        self.codes, self.sizes, self.trie = load_codes(config["tokens"], self.n_items)
        self.ex_user, self.ex_pos = next_item_examples(self.seqs.lengths)

    def build(self):
        return build_generative(model_spec(self.config, self.sizes))

    def _examples(self, ex: np.ndarray):
        u, p = self.ex_user[ex], self.ex_pos[ex]
        starts = self.seqs.offsets[:-1][u]
        hist = history_codes(self.codes, self.seqs.flat, starts, p, self.max_items)
        return hist, self.codes[self.seqs.flat[starts + p]]

    def batches(self, epoch: int, rank: int, world: int):
        rng = np.random.default_rng([self.t["seed"], epoch])
        order = rng.permutation(len(self.ex_user))
        for batch in length_grouped_batches(order, np.minimum(self.ex_pos, self.max_items), self.t["batch_size"],
                                            self.t.get("group_by_length", 0), rng):
            yield self._examples(batch[rank::world])

    def empty_batch(self):
        return self._examples(np.zeros(0, dtype=np.int64))

    def size(self, batch) -> int:
        return len(batch[1])

    def loss(self, model, batch) -> torch.Tensor:
        device = next(model.parameters()).device
        hist, target = (torch.from_numpy(a).to(device) for a in batch)
        if not len(target):  # an empty lockstep batch: a zero loss that still touches every parameter
            return sum(p.sum() for p in model.parameters()) * 0.0
        return model(hist, target)

    @torch.no_grad()
    def evaluate(self, model, split: str, rank: int, world: int, final: bool) -> dict:
        was = model.training
        model.eval()
        inner = model.module if hasattr(model, "module") else model
        device = next(model.parameters()).device
        cut = 2 if split == "valid" else 1
        fraction = self.config["eval"]["valid_fraction"] if split == "valid" else 1.0
        users = np.arange(rank, len(self.seqs), world)
        if fraction < 1.0:
            users = users[np.random.default_rng(self.t["seed"]).random(len(users)) < fraction]
        # decoded in order of history length: a batch of users pays little padding (the sums do not depend on it)
        users = users[np.argsort(np.minimum(self.seqs.lengths[users] - cut, self.max_items), kind="stable")]
        out = {**metric_sums(np.zeros(0), KS, NDCG_KS), **metric_sums(np.zeros(0), KS, NDCG_KS, prefix=NOHIST)}
        for a in range(0, len(users), self.config["eval"]["batch_users"]):
            u = users[a:a + self.config["eval"]["batch_users"]]
            starts, n = self.seqs.offsets[:-1][u], self.seqs.lengths[u] - cut
            hist = torch.from_numpy(history_codes(self.codes, self.seqs.flat, starts, n, self.max_items)).to(device)
            memory, pad = inner.encode(hist)

            def step(level, prefixes, rows):
                return inner.next_logp(memory[rows], pad[rows], prefixes.to(device)).cpu()

            items, _ = beam_search(self.trie, step, len(u), self.beam)
            target = self.seqs.flat[starts + n]
            seen = (np.repeat(np.arange(len(u)), n),  # every earlier item of each user, for the NOHIST metrics
                    self.seqs.flat[np.repeat(starts - np.cumsum(n) + n, n) + np.arange(n.sum())])
            sums = {**metric_sums(ranks_in_list(items, target), KS, NDCG_KS),
                    **metric_sums(ranks_in_list(items, target, seen), KS, NDCG_KS, prefix=NOHIST)}
            for k, v in sums.items():
                out[k] += v
        model.train(was)
        return {k.replace("HIT@", "Recall@"): v for k, v in out.items()}  # one target: Recall@k = HIT@k


def train_loop(config: dict) -> None:
    """Ray Train worker entry point: the generative family on the shared engine."""
    import ray.train

    from semrec.train.engine import fit

    ctx = ray.train.get_context()
    fit(partial(GenerativeFamily, config), config["train"], ctx.get_world_rank(), ctx.get_world_size())
