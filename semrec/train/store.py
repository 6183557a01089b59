"""The two STORE families on the shared training engine (``semrec.models.store``).

``DenseTokenizerFamily`` -- post-pretraining of the dense tokenizer: every (item, task) pair is one example,
the content block is the item's ``content_fields`` and each task emits one attribute (a task on a content field
is a reconstruction task, any other field a generation task, the paper's Table 2). Items are split by a hash of
(seed, item id) into train / valid / test (``holdout`` each); the metric is the teacher-forced next-token
accuracy of the answers of held-out items.

``StoreRecFamily`` -- the generative recommender: the backbone with code tokens added, trained on any of
``generation`` (history -> next item's codes, every (history, next) pair of s[:-2]), ``alignment`` (title ->
codes and codes -> title for every item with a title) and ``scoring`` (history + a candidate -> " yes" for the
next item, " no" for a random other item). Evaluation is leave-one-out over the whole catalogue: Hugging Face
beam search constrained by the code trie (``TrieLogitsProcessor``); Recall@k / NDCG@k from the target's rank
among the beams. At the final evaluation it also reports, when asked, the per-position-only constraint (the
ablation "without conditional beam search": ``invalid_share`` of generated sequences that are no item) and
yes/no scoring of the target among ``score_negatives`` random items (AUC, MRR, nDCG@1/5, the paper's Table 5).
"""

from __future__ import annotations

from functools import partial
import numpy as np
import torch
from torch import nn

from semrec.data.hashing import hash_rows
from semrec.data.io import parquet_files, read_table
from semrec.errors import InputError
from semrec.eval.metrics import metric_sums, ranks_in_list
from semrec.models.store import (DenseTokenizer, add_code_tokens, content_ids, field_texts, lm_loss,
                                 load_causal_lm, load_tokenizer, pad_right, recommender_prompts, with_lora,
                                 yes_probability)

KS, NDCG_KS = (1, 5, 10, 20), (5, 10, 20)


def split_of(ids: np.ndarray, seed: int, holdout: float) -> np.ndarray:
    """0 train, 1 valid, 2 test by a hash of (seed, id): stable whatever the table order."""
    u = (hash_rows(np.stack([ids, np.full_like(ids, seed)], 1)) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.where(u < holdout, 1, np.where(u < 2 * holdout, 2, 0))


def item_texts(path, fields: list[str]) -> tuple[np.ndarray, dict[str, list[str]]]:
    """(item ids, field -> texts) of an items table; list fields (categories) are joined with ', '."""
    t = read_table(parquet_files(path, "items"), "items")
    return t.column("item_id").to_numpy(), field_texts(t, fields, str(path))


# ----------------------------------------------------------------------------- dense tokenizer
def build_dense_tokenizer(cfg: dict) -> DenseTokenizer:
    lm, _ = load_causal_lm(cfg["model_path"])
    lo = cfg["lora"]
    lm = with_lora(lm, lo["rank"], lo["alpha"], lo["dropout"], lo["targets"])
    return DenseTokenizer(lm, cfg["dense_tokens"], len(cfg["tasks"]), seed=cfg["train"]["seed"])


class DenseTokenizerFamily:
    metric = "accuracy"

    def __init__(self, cfg: dict):
        self.cfg, self.t = cfg, cfg["train"]
        tok = load_tokenizer(cfg["model_path"])
        self.pad = tok.pad_token_id
        fields = list(dict.fromkeys(cfg["content_fields"] + cfg["tasks"]))
        self.ids, texts = item_texts(cfg["items"], fields)
        self.content = content_ids(tok, texts, cfg["content_fields"], cfg["max_content_tokens"])
        eos = [tok.eos_token_id]
        self.answers = [[a[:cfg["max_answer_tokens"]] + eos if len(a) else [] for a in
                         tok([" " + x for x in texts[f]], add_special_tokens=False)["input_ids"]] for f in cfg["tasks"]]
        self.split = split_of(self.ids, self.t["seed"], cfg["holdout"])
        # examples: (item row, task) where the item has content and the attribute is non-empty
        rows, tasks = np.meshgrid(np.arange(len(self.ids)), np.arange(len(cfg["tasks"])), indexing="ij")
        ok = np.array([len(self.content[r]) > 0 and len(self.answers[k][r]) > 1
                       for r, k in zip(rows.ravel(), tasks.ravel())], dtype=bool)
        self.ex = np.stack([rows.ravel()[ok], tasks.ravel()[ok]], 1)
        if not len(self.ex):
            raise InputError(f"{cfg['items']}: no item has both content ({cfg['content_fields']}) and a task "
                             f"attribute ({cfg['tasks']})")

    def build(self) -> nn.Module:
        return build_dense_tokenizer(self.cfg)

    def _batch(self, ex: np.ndarray):
        content, clen = pad_right([self.content[r] for r in ex[:, 0]], self.pad)
        answer, alen = pad_right([self.answers[k][r] for r, k in ex], self.pad)
        return content, clen, torch.from_numpy(ex[:, 1].astype(np.int64)), answer, alen

    def batches(self, epoch: int, rank: int, world: int):
        train = self.ex[self.split[self.ex[:, 0]] == 0]
        order = np.random.default_rng([self.t["seed"], epoch]).permutation(len(train))
        gbs = self.t["batch_size"]
        for start in range(0, len(order), gbs):
            part = train[order[start:start + gbs]][rank::world]
            if len(part):
                yield self._batch(part)

    def empty_batch(self):
        return None

    def size(self, batch) -> int:
        return int(batch[4].sum()) if batch is not None else 0  # answer tokens

    def loss(self, model, batch) -> torch.Tensor:
        if batch is None:
            return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
        return model(*batch)

    @torch.no_grad()
    def evaluate(self, model, split: str, rank: int, world: int, final: bool) -> dict:
        was = model.training
        model.eval()
        ex = self.ex[self.split[self.ex[:, 0]] == (1 if split == "valid" else 2)][rank::world]
        correct = total = nll = 0.0
        for a in range(0, len(ex), self.cfg["eval_batch"]):
            content, clen, task, answer, alen = self._batch(ex[a:a + self.cfg["eval_batch"]])
            c, n, s = model.answer_stats(content, clen, task, answer, alen)
            correct, total, nll = correct + c, total + n, nll + s
        model.train(was)
        return {"accuracy": correct, "nll": nll, "count": total}


# ----------------------------------------------------------------------------- recommender
class StoreRecommender(nn.Module):
    """The peft-wrapped backbone; ``forward`` is the summed answer loss of a batch of (prompt, answer) pairs."""

    def __init__(self, lm: nn.Module, pad: int):
        super().__init__()
        self.lm, self.pad = lm, pad

    def forward(self, prompts: list[list[int]], answers: list[list[int]]) -> torch.Tensor:
        return lm_loss(self.lm, prompts, answers, self.pad)


def build_recommender(cfg: dict, sizes: list[int]) -> StoreRecommender:
    """The backbone at ``cfg['backbone']`` with the code tokens of ``sizes`` added and a fresh LoRA adapter."""
    lm, tok = load_causal_lm(cfg["backbone"])
    offset = add_code_tokens(tok, lm, sizes)
    lo = cfg["lora"]
    lm = with_lora(lm, lo["rank"], lo["alpha"], lo["dropout"], lo["targets"],
                   new_token_ids=list(range(offset, offset + int(sum(sizes)))))
    return StoreRecommender(lm, tok.pad_token_id)


class StoreRecFamily:
    metric = "NDCG@10"

    def __init__(self, cfg: dict):
        from semrec.data.sequences import load_sequences
        from semrec.train.generative import load_codes, next_item_examples

        self.cfg, self.t, self.e = cfg, cfg["train"], cfg["eval"]
        self.n_items, self.max_items = cfg["n_items"], cfg["max_items"]
        self.seqs = load_sequences(cfg["sequences"], n_items=self.n_items).rows
        self.codes, self.sizes, self.trie = load_codes(cfg["tokens"], self.n_items)
        self.ex_user, self.ex_pos = next_item_examples(self.seqs.lengths)
        self.tasks = cfg["tasks"]
        unknown = set(self.tasks) - {"generation", "alignment", "scoring"}
        if unknown or not self.tasks:
            raise InputError(f"unknown recommender tasks {sorted(unknown)} (use generation, alignment, scoring)")
        self.titles = None
        if "alignment" in self.tasks:
            ids, texts = item_texts(cfg["items"], ["title"])
            self.titles = [""] * (self.n_items + 1)
            for i, title in zip(ids, texts["title"]):
                if 1 <= i <= self.n_items:
                    self.titles[i] = title
        self.prompts = recommender_prompts(cfg["backbone"], self.sizes)

    def build(self) -> nn.Module:
        model = build_recommender(self.cfg, self.sizes)
        if self.cfg.get("init"):
            from safetensors.torch import load_file

            from semrec.train.engine import load_state

            load_state(model, load_file(self.cfg["init"]))
        return model

    def _history(self, user: int, n: int) -> np.ndarray:
        s = self.seqs.offsets[user]
        ids = self.seqs.flat[s + max(0, n - self.max_items):s + n]
        return self.codes[ids]

    def _examples(self, epoch: int) -> list[tuple[list[int], list[int]]]:
        rng = np.random.default_rng([self.t["seed"], epoch, 1])
        p, out = self.prompts, []
        starts = self.seqs.offsets[:-1]
        for u, k in zip(self.ex_user, self.ex_pos):
            hist, target = self._history(u, k), self.seqs.flat[starts[u] + k]
            if "generation" in self.tasks:
                out.append((p.generation(hist), p.codes(self.codes[target]) + p.eos))
            if "scoring" in self.tasks:
                if rng.random() < 0.5:
                    out.append((p.scoring(hist, self.codes[target]), p.yes))
                else:
                    neg = int(rng.integers(1, self.n_items + 1))
                    out.append((p.scoring(hist, self.codes[neg]), p.yes if neg == target else p.no))
        if "alignment" in self.tasks:
            for i in range(1, self.n_items + 1):
                title = self.titles[i]
                if title:
                    title_ids = p.enc(" " + title)[:self.cfg["max_title_tokens"]]
                    out.append((p.title_to_codes(title), p.codes(self.codes[i]) + p.eos))
                    out.append((p.codes_to_title(self.codes[i]), title_ids + p.eos))
        return out

    def batches(self, epoch: int, rank: int, world: int):
        ex = self._examples(epoch)
        order = np.random.default_rng([self.t["seed"], epoch]).permutation(len(ex))
        gbs = self.t["batch_size"]
        for start in range(0, len(order), gbs):
            part = [ex[i] for i in order[start:start + gbs][rank::world]]
            if part:
                yield part

    def empty_batch(self):
        return None

    def size(self, batch) -> int:
        return len(batch) if batch is not None else 0

    def loss(self, model, batch) -> torch.Tensor:
        if batch is None:
            return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
        return model([a for a, _ in batch], [b for _, b in batch])

    def _users(self, split: str, rank: int, world: int, final: bool) -> np.ndarray:
        """This rank's users of ``split``: validation a seeded fraction; test every user, or a seeded sample of
        ``test_users``, and none at the end of a stage that is not the last (``eval.stage_test`` off)."""
        if split == "test" and not self.e.get("stage_test", True):
            return np.zeros(0, dtype=np.int64)
        users = np.arange(len(self.seqs))
        if split == "valid" and self.e["valid_fraction"] < 1.0:
            users = users[np.random.default_rng(self.t["seed"]).random(len(users)) < self.e["valid_fraction"]]
        if split == "test" and self.e.get("test_users") and self.e["test_users"] < len(users):
            users = np.sort(np.random.default_rng([self.t["seed"], 11]).choice(users, self.e["test_users"],
                                                                                replace=False))
        return users[rank::world]

    def decode(self, model, prompts: list[list[int]], constraint: str = "trie") -> tuple[np.ndarray, np.ndarray]:
        """Beam search for a batch of prompts: (B, beam) item ids (-1: a generated sequence that is no item) and
        their log-probabilities. ``constraint``: "trie" (only real items) or "position" (each step limited to
        its level's code block, the per-position constraint)."""
        from semrec.decoding.hf import TrieLogitsProcessor

        lm = model.lm
        tok = self.prompts.tok
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding: generation continues every row at the same column
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        levels, beam = self.trie.levels, self.e["beam"]
        proc = TrieLogitsProcessor(self.trie, self.prompts.vocab, width) if constraint == "trie" \
            else PositionLogitsProcessor(self.prompts.vocab, width)
        out = lm.generate(input_ids=ids, attention_mask=mask, num_beams=beam, num_return_sequences=beam,
                          max_new_tokens=levels, min_new_tokens=levels, do_sample=False, logits_processor=[proc],
                          output_scores=True, return_dict_in_generate=True, early_stopping=False,
                          length_penalty=0.0, pad_token_id=tok.pad_token_id, eos_token_id=None)
        gen = out.sequences[:, width:width + levels].cpu().numpy()
        codes = self.prompts.vocab.codes(gen)
        items = np.full(len(gen), -1, dtype=np.int64)
        ok = (codes >= 0).all(1)
        items[ok] = self.trie.lookup(codes[ok])
        scores = out.sequences_scores.cpu().numpy()
        items[~np.isfinite(scores)] = -1
        return items.reshape(len(prompts), beam), scores.reshape(len(prompts), beam)

    @torch.no_grad()
    def evaluate(self, model, split: str, rank: int, world: int, final: bool) -> dict:
        was = model.training
        model.eval()
        cut = 2 if split == "valid" else 1
        users = self._users(split, rank, world, final)
        out = metric_sums(np.zeros(0), KS, NDCG_KS)
        extra = {}
        rng = np.random.default_rng([self.t["seed"], 7])
        bu = self.e["batch_users"]
        for a in range(0, len(users), bu):
            u = users[a:a + bu]
            n = self.seqs.lengths[u] - cut
            target = self.seqs.flat[self.seqs.offsets[u] + n]
            hists = [self._history(x, k) for x, k in zip(u, n)]
            items, _ = self.decode(model, [self.prompts.generation(h) for h in hists])
            for k, v in metric_sums(ranks_in_list(items, target), KS, NDCG_KS).items():
                out[k] += v
            if final and self.e["per_position_ablation"]:
                loose, _ = self.decode(model, [self.prompts.generation(h) for h in hists], constraint="position")
                sums = metric_sums(ranks_in_list(loose, target), KS, NDCG_KS, prefix="per_position_", mrr=False)
                sums["per_position_invalid_share"] = float((loose < 0).mean(1).sum())
                for k, v in sums.items():
                    if k != "count":
                        extra[k] = extra.get(k, 0.0) + v
            cap = self.e["score_users"]
            todo = len(u) if cap is None else max(0, min(len(u), -(-cap // world) - a))
            if final and "scoring" in self.tasks and todo and self.e.get("stage_test", True):
                for k, v in self._score(model, hists[:todo], target[:todo], rng).items():
                    extra[k] = extra.get(k, 0.0) + v
                extra["score_users"] = extra.get("score_users", 0.0) + todo
        model.train(was)
        out = {k.replace("HIT@", "Recall@"): v for k, v in out.items()}
        out.update(extra)
        return out

    @staticmethod
    def finalize(sums: dict, count: float) -> dict:
        """Means over the users decoded; the scoring metrics over the users scored."""
        scored = sums.get("score_users", 0.0)
        out = {k: v / max(scored if k.startswith("score_") and k != "score_users" else count, 1.0)
               for k, v in sums.items() if k != "score_users"}
        if scored:
            out["score_users"] = scored
        return out

    def _score(self, model, hists, target, rng) -> dict[str, float]:
        """Yes/no scoring of each user's target among ``score_negatives`` random other items: per-user AUC, MRR,
        nDCG@1, nDCG@5 (sums over users)."""
        k = self.e["score_negatives"]
        p = self.prompts
        sums = {"score_AUC": 0.0, "score_MRR": 0.0, "score_nDCG@1": 0.0, "score_nDCG@5": 0.0}
        for h, t in zip(hists, target):
            cands = rng.choice(np.setdiff1d(np.arange(1, self.n_items + 1), [t]), size=k, replace=False)
            cands = np.concatenate([[t], cands])
            probs = yes_probability(model.lm, [p.scoring(h, self.codes[c]) for c in cands], p.yes[0], p.no[0],
                                    p.tok.pad_token_id)
            rank = int((probs[1:] > probs[0]).sum())  # pessimistic ties would need >=; scores are continuous
            sums["score_AUC"] += float((probs[0] > probs[1:]).mean() + 0.5 * (probs[0] == probs[1:]).mean())
            sums["score_MRR"] += 1.0 / (rank + 1)
            sums["score_nDCG@1"] += float(rank < 1)
            sums["score_nDCG@5"] += float(rank < 5) / np.log2(rank + 2)
        return sums


class PositionLogitsProcessor:
    """The per-position constraint only (LC-Rec's soft constraint): at generated step t any code token of level
    t is allowed, whether or not the prefix is a real item's."""

    def __init__(self, vocab, prompt_len: int):
        self.vocab, self.prompt_len = vocab, int(prompt_len)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        t = input_ids.shape[1] - self.prompt_len
        mask = torch.full_like(scores, float("-inf"))
        if t < len(self.vocab.sizes):
            lo = int(self.vocab.bases[t])
            mask[:, lo:lo + self.vocab.sizes[t]] = 0.0
        return scores + mask


def dense_train_loop(config: dict) -> None:
    import ray.train

    from semrec.train.engine import fit

    ctx = ray.train.get_context()
    fit(partial(DenseTokenizerFamily, config), config["train"], ctx.get_world_rank(), ctx.get_world_size())


def rec_train_loop(config: dict) -> None:
    import ray.train

    from semrec.train.engine import fit

    ctx = ray.train.get_context()
    fit(partial(StoreRecFamily, config), config["train"], ctx.get_world_rank(), ctx.get_world_size())
