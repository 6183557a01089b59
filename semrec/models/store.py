"""STORE: one causal LLM as the dense item tokenizer and as the generative recommender (paper 003).

**Dense tokenizer.** An item's input is four blocks: ``content`` (the item's text), ``token`` (v learnable
dense-token embeddings), ``placeholder`` (v slots) and ``task`` (a learnable task token, then the answer text).
The **cascaded attention mask** (``cascaded_mask``, the paper's Fig. 4): inside every block attention is causal;
across blocks only token -> content and task -> placeholder are open. So the dense tokens read the content, the
task reads only the placeholders, and the placeholders -- filled with the token block's output states by a first
forward pass (the "dual forward"; rescaled to the word embeddings' norm, ``DenseTokenizer.fill``) -- are the only path from the content to the answer: the v output states must
carry the item. Under this mask the full sequence splits into two independent causal passes, [content | token]
and [placeholder | task], with the same position ids; ``DenseTokenizer.loss`` runs those two short passes (the
fast path) and ``DenseTokenizer.loss_reference`` the single cascaded-mask sequence of the paper; a test checks
they agree. The item embedding is the v output states of the token block (``dense_outputs``), which
``semrec.quant.PCAKMeans`` turns into v codes.

**Recommender.** The same backbone (the tokenizer's LoRA merged in) with one vocabulary token per (level, code)
(``add_code_tokens``), a new LoRA, and trainable rows for the new tokens only (peft ``trainable_token_indices``).
Prompts are token-id lists built from text pieces and code tokens (``Prompts``): next-item generation, the
text-token alignment tasks (title -> codes, codes -> title), and yes/no scoring.

Nothing here loads remote code: ``trust_remote_code=False``, local folders only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from semrec.errors import InputError

PAD, CONTENT, TOKEN, PLACEHOLDER, TASK = -1, 0, 1, 2, 3
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def check_model_dir(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise InputError(f"model folder not found: {p}")
    if not (p / "config.json").is_file():
        raise InputError(f"{p}: no config.json (a Hugging Face model folder is expected)")
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        raise InputError(f"{p}: no model weights ({' / '.join(WEIGHT_FILES)}); a GGUF file must be converted "
                         f"first: python jobs/store.py prepare-model")
    return p


def load_tokenizer(path: str | Path):
    """The tokenizer of a local model folder, with a pad token (its EOS when it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a local folder."""
    from transformers import AutoModelForCausalLM

    p = check_model_dir(path)
    model = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True, trust_remote_code=False, dtype=dtype)
    return model, load_tokenizer(p)


def field_texts(table, fields: list[str], where: str = "items") -> dict[str, list[str]]:
    """field -> one string per row of a pyarrow items table; list fields (categories) joined with ', ', nulls
    as ''. A missing field is an error naming ``where`` and the columns."""
    missing = [f for f in fields if f not in table.column_names]
    if missing:
        raise InputError(f"{where}: items table has no column {missing[0]!r} (columns: {table.column_names})")
    return {f: [", ".join(x for x in v if x) if isinstance(v, list) else (v or "")
                for v in table.column(f).to_pylist()] for f in fields}


def content_ids(tok, texts: dict[str, list[str]], fields: list[str], max_tokens: int) -> list[list[int]]:
    """The content block of each item: "field: text" of its non-empty ``fields`` joined by spaces, tokenized
    without special tokens and truncated to ``max_tokens`` (an item with no text has an empty block)."""
    n = len(texts[fields[0]]) if fields else 0
    strings = [" ".join(f"{f}: {texts[f][i]}" for f in fields if texts[f][i]) for i in range(n)]
    return [x[:max_tokens] for x in tok(strings, add_special_tokens=False)["input_ids"]] if n else []


def base_of(lm: nn.Module) -> nn.Module:
    """The ``*ForCausalLM`` under a peft wrapper (or ``lm`` itself)."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


# ----------------------------------------------------------------------------- the cascaded mask
def cascaded_mask(blocks: torch.Tensor) -> torch.Tensor:
    """(B, T) block ids (PAD, CONTENT, TOKEN, PLACEHOLDER, TASK) -> (B, T, T) bool, True = query may attend key.

    Causal inside each block; token -> content and task -> placeholder fully open; everything else closed;
    padding is never attended (a padding query attends itself only, so no softmax row is empty)."""
    t = blocks.shape[1]
    q, k = blocks[:, :, None], blocks[:, None, :]
    idx = torch.arange(t, device=blocks.device)
    causal = idx[:, None] >= idx[None, :]
    allowed = ((q == k) & causal) | ((q == TOKEN) & (k == CONTENT)) | ((q == TASK) & (k == PLACEHOLDER))
    allowed &= (q != PAD) & (k != PAD)
    return allowed | ((q == PAD) & torch.eye(t, dtype=torch.bool, device=blocks.device))


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T, T) bool -> (B, 1, T, T) additive mask (0 / dtype min), the 4-D form HF attention takes as is."""
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[:, None]


def pad_right(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged id lists -> (B, T) ids right-padded with ``pad`` and their (B,) lengths."""
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), max(1, int(lens.max()) if len(seqs) else 1)), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out, lens


# ----------------------------------------------------------------------------- dense tokenizer
class DenseTokenizer(nn.Module):
    """A causal LM (usually peft-wrapped with LoRA) plus v dense-token and ``n_tasks`` task-token embeddings.
    The LM's word embeddings stay frozen (the paper), the dense and task embeddings train."""

    def __init__(self, lm: nn.Module, v: int, n_tasks: int, seed: int = 0):
        super().__init__()
        self.lm, self.v, self.n_tasks = lm, int(v), int(n_tasks)
        words = base_of(lm).get_input_embeddings().weight.detach()
        g = torch.Generator().manual_seed(seed)
        # start near the word-embedding distribution (its mean, plus noise of its per-dimension spread)
        mean, std = words.mean(0), words.std(0)
        self.dense = nn.Parameter(mean + std * torch.randn(self.v, words.shape[1], generator=g))
        self.tasks = nn.Parameter(mean + std * torch.randn(self.n_tasks, words.shape[1], generator=g))
        # output states are ~15x the norm of word embeddings (SmolLM2: 50 vs 3.2); placeholders get them rescaled
        # to the mean word-embedding norm, so the filled block looks like input embeddings to the first layer
        self.register_buffer("fill_norm", words.norm(dim=1).mean().reshape(1), persistent=True)

    def fill(self, states: torch.Tensor) -> torch.Tensor:
        """The placeholder inputs from the token block's output states (same direction, word-embedding norm)."""
        return states * (self.fill_norm / states.norm(dim=-1, keepdim=True).clamp(min=1e-6))

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return base_of(self.lm).get_input_embeddings()(ids)

    def _hidden(self, embeds, mask, positions) -> torch.Tensor:
        # call through the (peft) LM's inner model so LoRA applies; logits only where needed
        return base_of(self.lm).model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                      use_cache=False).last_hidden_state

    def dense_outputs(self, content: torch.Tensor, content_len: torch.Tensor) -> torch.Tensor:
        """Pass 1: (B, C) right-padded content ids -> (B, v, D) output states of the token block."""
        b, c = content.shape
        idx = torch.arange(c, device=content.device)
        valid = idx[None] < content_len[:, None]
        embeds = torch.cat([self._embed(content), self.dense.expand(b, -1, -1)], 1)
        mask = torch.cat([valid, torch.ones(b, self.v, dtype=torch.bool, device=content.device)], 1).long()
        pos = torch.cat([torch.where(valid, idx[None], 0),
                         content_len[:, None] + torch.arange(self.v, device=content.device)[None]], 1)
        return self._hidden(embeds, mask, pos)[:, c:]

    @torch.no_grad()
    def embed(self, content: list[list[int]], pad: int, batch_size: int) -> np.ndarray:
        """Item embeddings: (n, v * D) float32, the flattened ``dense_outputs`` of each content block, in the
        order given. Blocks are run in forward passes of ``batch_size`` sorted by length (less padding; the
        mask and position ids make the result independent of the padding)."""
        order = np.argsort([len(c) for c in content], kind="stable")
        out = np.empty((len(content), self.v * self.dense.shape[1]), np.float32)
        for a in range(0, len(order), batch_size):
            rows = order[a:a + batch_size]
            ids, lens = pad_right([content[r] for r in rows], pad)
            out[rows] = self.dense_outputs(ids, lens).reshape(len(rows), -1).float().numpy()
        return out

    def _answer_loss(self, hidden: torch.Tensor, answer: torch.Tensor, answer_len: torch.Tensor,
                     start: int) -> torch.Tensor:
        """Sum of the next-token losses of the answers: the state at ``start + j`` predicts answer[j]."""
        a = answer.shape[1]
        valid = torch.arange(a, device=answer.device)[None] < answer_len[:, None]
        logits = base_of(self.lm).lm_head(hidden[:, start:start + a][valid])
        return nn.functional.cross_entropy(logits.float(), answer[valid], reduction="sum")

    def forward(self, content, content_len, task, answer, answer_len) -> torch.Tensor:
        return self.loss(content, content_len, task, answer, answer_len)

    def _answer_hidden(self, content, content_len, task, answer, answer_len) -> torch.Tensor:
        filled = self.fill(self.dense_outputs(content, content_len))
        b, a = answer.shape
        embeds = torch.cat([filled, self.tasks[task][:, None], self._embed(answer)], 1)
        valid = torch.arange(a, device=answer.device)[None] < answer_len[:, None]
        mask = torch.cat([torch.ones(b, self.v + 1, dtype=torch.bool, device=answer.device), valid], 1).long()
        pos = (content_len + self.v)[:, None] + torch.arange(self.v + 1 + a, device=answer.device)[None]
        return self._hidden(embeds, mask, pos)

    @torch.no_grad()
    def answer_stats(self, content, content_len, task, answer, answer_len) -> tuple[float, float, float]:
        """(correct next-token predictions, answer tokens, summed NLL) of a batch, teacher-forced."""
        hidden = self._answer_hidden(content, content_len, task, answer, answer_len)
        a = answer.shape[1]
        valid = torch.arange(a, device=answer.device)[None] < answer_len[:, None]
        logits = base_of(self.lm).lm_head(hidden[:, self.v:self.v + a][valid]).float()
        target = answer[valid]
        nll = nn.functional.cross_entropy(logits, target, reduction="sum")
        return float((logits.argmax(-1) == target).sum()), float(len(target)), float(nll)

    def loss(self, content, content_len, task, answer, answer_len) -> torch.Tensor:
        """The dual forward, fast path: pass 1 fills the placeholders with the token block's outputs, pass 2 runs
        [placeholder | task token | answer] causally; sum of the answer tokens' losses."""
        hidden = self._answer_hidden(content, content_len, task, answer, answer_len)
        return self._answer_loss(hidden, answer, answer_len, self.v)

    def _full_sequence(self, content, content_len, task, answer, answer_len, filled):
        b, c = content.shape
        a, dev = answer.shape[1], content.device
        idx_c, idx_a = torch.arange(c, device=dev)[None], torch.arange(a, device=dev)[None]
        cv, av = idx_c < content_len[:, None], idx_a < answer_len[:, None]
        blocks = torch.cat([torch.where(cv, CONTENT, PAD), torch.full((b, self.v), TOKEN, device=dev),
                            torch.full((b, self.v), PLACEHOLDER, device=dev), torch.full((b, 1), TASK, device=dev),
                            torch.where(av, TASK, PAD)], 1)
        after = content_len[:, None] + torch.arange(2 * self.v + 1 + a, device=dev)[None]
        pos = torch.cat([torch.where(cv, idx_c, 0), after], 1)
        embeds = torch.cat([self._embed(content), self.dense.expand(b, -1, -1), filled, self.tasks[task][:, None],
                            self._embed(answer)], 1)
        return self._hidden(embeds, additive_mask(cascaded_mask(blocks), embeds.dtype), pos), c

    def loss_reference(self, content, content_len, task, answer, answer_len) -> torch.Tensor:
        """The paper's form: one sequence [content | token | placeholder | task] under the cascaded 4-D mask, run
        twice (placeholders zero, then filled with the first run's token-block outputs)."""
        zeros = torch.zeros(len(content), self.v, self.dense.shape[1], dtype=self.dense.dtype, device=content.device)
        hidden, c = self._full_sequence(content, content_len, task, answer, answer_len, zeros)
        filled = self.fill(hidden[:, c:c + self.v])
        hidden, c = self._full_sequence(content, content_len, task, answer, answer_len, filled)
        return self._answer_loss(hidden, answer, answer_len, c + 2 * self.v)


# ----------------------------------------------------------------------------- recommender
# ----------------------------------------------------------------------------- the tokenizer artefact
DENSE_FILE, DENSE_CONFIG = "dense_tokens.safetensors", "config.json"


def save_dense_tokenizer(model: DenseTokenizer, root: Path, spec: dict) -> None:
    """Write a trained tokenizer under ``root`` (a ``store.py tokenizer`` output): ``tokenizer/`` (the LoRA
    adapter, the dense and task embeddings, ``spec`` as config.json) and ``backbone/`` (the LoRA merged, with
    the tokenizer files: what ``load_dense_tokenizer`` and the recommender load). ``model.lm`` is merged in
    place, so save last."""
    import json

    from safetensors.torch import save_file

    tdir = Path(root) / "tokenizer"
    model.lm.save_pretrained(str(tdir / "adapter"))
    save_file({"dense": model.dense.detach().contiguous(), "tasks": model.tasks.detach().contiguous()},
              str(tdir / DENSE_FILE))
    (tdir / DENSE_CONFIG).write_text(json.dumps(spec, indent=2) + "\n")
    merged = model.lm.merge_and_unload() if hasattr(model.lm, "merge_and_unload") else model.lm
    base_of(merged).save_pretrained(str(Path(root) / "backbone"))
    load_tokenizer(spec["model_path"]).save_pretrained(str(Path(root) / "backbone"))


def check_dense_tokenizer(root: str | Path) -> dict:
    """The spec of a ``store.py tokenizer`` output, or an ``InputError`` naming what is missing (no weights
    are read)."""
    import json

    root = Path(root)
    for f in (root / "tokenizer" / DENSE_CONFIG, root / "tokenizer" / DENSE_FILE):
        if not f.is_file():
            raise InputError(f"{root}: not a store tokenizer output ({f.relative_to(root)} is missing)")
    check_model_dir(root / "backbone")
    spec = json.loads((root / "tokenizer" / DENSE_CONFIG).read_text())
    missing = [k for k in ("v", "tasks", "content_fields", "max_content_tokens") if k not in spec]
    if missing:
        raise InputError(f"{root / 'tokenizer' / DENSE_CONFIG}: no {missing[0]!r}")
    return spec


def load_dense_tokenizer(root: str | Path, dtype: torch.dtype = torch.float32):
    """(DenseTokenizer in eval mode, HF tokenizer, spec) from a ``store.py tokenizer`` output: the merged
    ``backbone/`` plus ``tokenizer/dense_tokens.safetensors`` (no peft needed at inference). Missing pieces are
    an ``InputError`` naming the file."""
    import json

    from safetensors.torch import load_file

    root = Path(root)
    spec = check_dense_tokenizer(root)
    lm, tok = load_causal_lm(root / "backbone", dtype)
    state = load_file(str(root / "tokenizer" / DENSE_FILE))
    model = DenseTokenizer(lm, spec["v"], len(spec["tasks"]))
    if tuple(state["dense"].shape) != tuple(model.dense.shape):
        raise InputError(f"{root}: dense tokens {tuple(state['dense'].shape)} do not fit the backbone "
                         f"(v = {spec['v']}, hidden {model.dense.shape[1]})")
    with torch.no_grad():
        model.dense.copy_(state["dense"])
        model.tasks.copy_(state["tasks"])
    return model.eval().requires_grad_(False), tok, spec


def code_token_strings(sizes: list[int]) -> list[str]:
    return [f"<c{level}_{code}>" for level, size in enumerate(sizes) for code in range(size)]


def add_code_tokens(tokenizer, lm: nn.Module, sizes: list[int]) -> int:
    """Add one token per (level, code) to ``tokenizer`` and ``lm``; returns the first new id (the code block is
    contiguous: level l code c is ``offset + sum(sizes[:l]) + c``, ``semrec.decoding.CodeVocab``)."""
    names = code_token_strings(sizes)
    offset = len(tokenizer)
    added = tokenizer.add_tokens(names)
    ids = tokenizer.convert_tokens_to_ids(names)
    if added != len(names) or ids != list(range(offset, offset + len(names))):
        raise InputError(f"the tokenizer already has some of the code tokens {names[:2]}...: use a backbone "
                         f"without them")
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = lm.get_input_embeddings().weight
    with torch.no_grad():  # new rows near the word-embedding distribution
        words = emb[:offset]
        g = torch.Generator().manual_seed(0)
        emb[offset:] = words.mean(0) + words.std(0) * torch.randn(len(names), emb.shape[1], generator=g)
    return offset


def recommender_prompts(backbone: str | Path, sizes: list[int]) -> "Prompts":
    """The prompt builder of a recommender on ``backbone``: its tokenizer with the code tokens added exactly as
    ``add_code_tokens`` adds them to the model."""
    tok = load_tokenizer(backbone)
    offset = len(tok)
    tok.add_tokens(code_token_strings(sizes))
    return Prompts(tok, offset, sizes)


class Prompts:
    """Token-id prompts of the recommender's tasks (the paper's Fig. 5 and Fig. 7 templates, in English)."""

    def __init__(self, tokenizer, offset: int, sizes: list[int]):
        from semrec.decoding.hf import CodeVocab

        self.tok, self.vocab = tokenizer, CodeVocab(sizes, offset)
        enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.enc = enc
        self.history, self.next_item = enc("User history:"), enc("\nNext item:")
        self.item_title, self.item_code = enc("Item title:"), enc("\nItem code:")
        self.code_is, self.title_is = enc("Item code:"), enc("\nItem title:")
        self.candidate = enc("\nCandidate:")
        self.question = enc("\nWill the user interact with the candidate? Answer:")
        self.yes, self.no = enc(" yes"), enc(" no")
        if len(self.yes) != 1 or len(self.no) != 1:
            raise InputError("the tokenizer does not encode ' yes' and ' no' as single tokens (yes/no scoring "
                             "needs them)")
        self.sep = enc(";")
        self.eos = [tokenizer.eos_token_id]

    def codes(self, codes: np.ndarray) -> list[int]:
        return [int(self.vocab.token(level, c)) for level, c in enumerate(codes)]

    def history_ids(self, history: np.ndarray) -> list[int]:
        """``history``: (n, L) codes of the items, oldest first."""
        out = list(self.history)
        for i, row in enumerate(history):
            out += (self.sep if i else []) + self.codes(row)
        return out

    def generation(self, history: np.ndarray) -> list[int]:
        return self.history_ids(history) + self.next_item

    def scoring(self, history: np.ndarray, candidate: np.ndarray) -> list[int]:
        return self.history_ids(history) + self.candidate + self.codes(candidate) + self.question

    def title_to_codes(self, title: str) -> list[int]:
        return self.item_title + self.enc(" " + title) + self.item_code

    def codes_to_title(self, codes: np.ndarray) -> list[int]:
        return self.code_is + self.codes(codes) + self.title_is


def lm_loss(lm: nn.Module, prompts: list[list[int]], answers: list[list[int]], pad: int) -> torch.Tensor:
    """Sum over examples of the next-token losses of ``answers`` after ``prompts`` (right-padded batch)."""
    seqs = [p + a for p, a in zip(prompts, answers)]
    ids, lens = pad_right(seqs, pad)
    device = next(lm.parameters()).device
    ids, lens = ids.to(device), lens.to(device)
    t = ids.shape[1]
    mask = (torch.arange(t, device=device)[None] < lens[:, None]).long()
    hidden = base_of(lm).model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    rows, cols, targets = [], [], []
    for i, (p, a) in enumerate(zip(prompts, answers)):
        j = torch.arange(len(p) - 1, len(p) + len(a) - 1)
        rows.append(torch.full_like(j, i))
        cols.append(j)
        targets.append(torch.tensor(a, dtype=torch.long))
    rows, cols, targets = (torch.cat(x).to(device) for x in (rows, cols, targets))
    logits = base_of(lm).lm_head(hidden[rows, cols])
    return nn.functional.cross_entropy(logits.float(), targets, reduction="sum")


@torch.no_grad()
def yes_probability(lm: nn.Module, prompts: list[list[int]], yes: int, no: int, pad: int) -> np.ndarray:
    """P("yes") of softmax over the (yes, no) logits at the last prompt position (the paper's scoring)."""
    ids, lens = pad_right(prompts, pad)
    device = next(lm.parameters()).device
    ids, lens = ids.to(device), lens.to(device)
    mask = (torch.arange(ids.shape[1], device=device)[None] < lens[:, None]).long()
    hidden = base_of(lm).model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    last = hidden[torch.arange(len(prompts), device=device), lens - 1]
    logits = base_of(lm).lm_head(last)[:, [yes, no]].float()
    return torch.softmax(logits, -1)[:, 0].cpu().numpy()


def with_lora(lm: nn.Module, rank: int, alpha: int, dropout: float, targets: list[str],
              new_token_ids: list[int] | None = None):
    """``lm`` wrapped in a fresh LoRA adapter; ``new_token_ids`` (added code tokens) get trainable embedding
    rows (peft ``trainable_token_indices``; with tied embeddings the output layer shares them)."""
    from peft import LoraConfig, get_peft_model

    kw = {"trainable_token_indices": {"embed_tokens": list(new_token_ids)}} if new_token_ids else {}
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), **kw)
    return get_peft_model(lm, cfg)
