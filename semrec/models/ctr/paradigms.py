"""UIST Table 2 paradigms: how items and users are represented before a CTR model scores the pair.

An item side maps item ids to vectors of width d, a user side maps (user row, history item ids) to d;
the base CTR model (DCN / DeepFM / FinalMLP built with ``n_features=0, n_fields=2``) scores the two
fields through its ``score(E)``. UIST is its own route: ``HMI`` over user and item tokens.

| paradigm      | item                                   | user                                           |
|---------------|----------------------------------------|------------------------------------------------|
| ``id-id``     | (a) ID embedding                       | (e) user ID embedding                          |
| ``id-enc``    | (a) ID embedding                       | (f) encoder over the history (its item side)   |
| ``emb-enc``   | (c) frozen text embedding + projection | (f) encoder over the history                   |
| ``emb-cached``| (c) frozen text embedding + projection | (g) cached z of ``tokenize_users`` + projection|
| ``ist``       | (d) sum of the item's token embeddings | (f) encoder over the history (item tokens)     |
| ``uist``      | (d) item tokens                        | (h) user tokens, hierarchical mixture (HMI)    |
| ``din``       | (a) ID embedding                       | DIN target attention over the last max_len     |
| ``sim-hard``  | (a) ID embedding                       | SIM: top-k of the candidate's category, DIN    |
| ``dmqn``      | (a) ID embedding                       | DMQN: MCQM -> HSTU (cacheable) -> target attn. |
| ``dmqn-simple``| (a) ID embedding                      | DMQN without the HSTU layers                   |

The last four are candidate-aware ("target") user sides over long behaviour sequences
(``semrec.models.ctr.longseq``); DMQN's candidate-independent part is ``user_state`` and
``score_state`` scores candidates from it (the per-user cache).

Per-item and per-user tables (token codes, text embeddings, z) are buffers kept at their stored width
(codes uint8/int16, vectors float32), so ``representation_bytes`` measures what serving holds.
"""

from __future__ import annotations

import torch
from torch import nn

from semrec.models.ctr.longseq import DINUser, DMQNUser, SIMHardUser
from semrec.models.ctr.models import HMI, MODELS
from semrec.models.user_ae import SequenceEncoder

LONG_SEQUENCE = ("din", "sim-hard", "dmqn", "dmqn-simple")
PARADIGMS = ("id-id", "id-enc", "emb-enc", "emb-cached", "ist", "uist", *LONG_SEQUENCE)
ITEM_SIDE = {"id-id": "id", "id-enc": "id", "emb-enc": "text", "emb-cached": "text", "ist": "tokens", "uist": "tokens",
             **{p: "id" for p in LONG_SEQUENCE}}
USER_SIDE = {"id-id": "id", "id-enc": "encoder", "emb-enc": "encoder", "emb-cached": "cached", "ist": "encoder",
             "uist": "tokens", **{p: "target" for p in LONG_SEQUENCE}}


def compact_codes(codes: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    return codes.to(torch.uint8 if max(sizes) <= 256 else torch.int16)  # int16 holds < 32,768 codes


class TokenEmbeddings(nn.Module):
    """Per-level code embedding tables over stored codes (rows = ids): ``levels(ids)`` (..., K, d),
    ``forward(ids)`` their sum (the item tokenizer's representation, IST)."""

    def __init__(self, codes: torch.Tensor, sizes: list[int], dim: int, padding_row: bool):
        super().__init__()
        self.register_buffer("codes", compact_codes(codes, sizes))
        self.tables = nn.ModuleList(nn.Embedding(c, dim) for c in sizes)
        self.padding_row = padding_row
        for t in self.tables:
            nn.init.normal_(t.weight, std=1e-4)

    def levels(self, ids: torch.Tensor) -> torch.Tensor:
        c = self.codes[ids].long()
        return torch.stack([t(c[..., k]) for k, t in enumerate(self.tables)], dim=-2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.levels(ids).sum(-2)
        return out * (ids > 0).unsqueeze(-1) if self.padding_row else out


class FrozenVectors(nn.Module):
    """Stored vectors (text embeddings of items, or cached z of users), frozen, projected to d."""

    def __init__(self, vectors: torch.Tensor, dim: int, padding_row: bool):
        super().__init__()
        self.register_buffer("vectors", vectors.float())
        self.proj = nn.Linear(vectors.shape[1], dim)
        self.padding_row = padding_row

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.proj(self.vectors[ids])
        return out * (ids > 0).unsqueeze(-1) if self.padding_row else out


class IDTable(nn.Module):
    def __init__(self, rows: int, dim: int, padding_row: bool):
        super().__init__()
        self.table = nn.Embedding(rows, dim, padding_idx=0 if padding_row else None)
        nn.init.normal_(self.table.weight, std=1e-4)
        if padding_row:
            with torch.no_grad():
                self.table.weight[0].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)


class IDCategoryTable(nn.Module):
    """An item's ID embedding plus its (first) category's embedding, as DIN / SIM / DMQN feed behaviours and
    candidates (item id + category id features); category 0 = none, embedded as zero."""

    def __init__(self, rows: int, dim: int, categories: torch.Tensor, n_categories: int):
        super().__init__()
        self.ids = IDTable(rows, dim, padding_row=True)
        self.register_buffer("categories", categories.to(torch.int32))
        self.cats = IDTable(n_categories, dim, padding_row=True)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.ids(ids) + self.cats(self.categories[ids].long())


class ParadigmCTR(nn.Module):
    """``forward(users, items, history)``: users (B,) user rows, items (B,) item ids, history (B, L) item ids
    (left-padded; only read by encoder user sides) -> click logits (B,)."""

    def __init__(self, paradigm: str, base: nn.Module, item: nn.Module | None, user: nn.Module | None,
                 hmi: HMI | None = None, item_codes: torch.Tensor | None = None,
                 user_codes: torch.Tensor | None = None):
        super().__init__()
        self.paradigm, self.base, self.item, self.user, self.hmi = paradigm, base, item, user, hmi
        self.needs_history = USER_SIDE[paradigm] in ("encoder", "target")
        self.target_aware = USER_SIDE[paradigm] == "target"
        if hmi is not None:  # UIST: the HMI owns the token tables; the codes are stored here
            self.register_buffer("item_codes", item_codes)
            self.register_buffer("user_codes", user_codes)

    def user_vectors(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.user(history) if self.needs_history else self.user(users)

    def forward(self, users: torch.Tensor, items: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        if self.hmi is not None:
            return self.hmi(self.user_codes[users].long(), self.item_codes[items].long())
        if self.target_aware:
            iv = self.item(items)
            if isinstance(self.user, DMQNUser):
                return self.base.score(torch.stack([self._dmqn_interest(users, history, iv), iv], dim=1))
            return self.base.score(torch.stack([self.user(history, iv, items), iv], dim=1))
        return self.base.score(torch.stack([self.user_vectors(users, history), self.item(items)], dim=1))

    def _dmqn_interest(self, users: torch.Tensor, history: torch.Tensor, iv: torch.Tensor) -> torch.Tensor:
        """DMQN's interest vectors, the candidate-independent state computed once per distinct user of the batch
        (rows of one user share its history; checked, else once per row): exact, and what makes training and
        evaluating over many impressions of the same long history affordable."""
        uniq, inverse = torch.unique(users, return_inverse=True)
        if len(uniq) < len(users):
            first = torch.empty_like(uniq).scatter_(0, inverse, torch.arange(len(users), device=users.device))
            if torch.equal(history[first][inverse], history):
                clusters, valid = self.user.state(history[first])
                return self.user.attend(clusters[inverse], valid[inverse], iv)
        return self.user(history, iv, None)

    def user_state(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DMQN: the candidate-independent representation of each history (clusters after the HSTU layers,
        their sizes: behaviours per cluster, 0 = empty): what the per-user cache stores."""
        if not isinstance(self.user, DMQNUser):
            raise ValueError(f"paradigm {self.paradigm} has no candidate-independent user state (dmqn only)")
        return self.user.state(history)

    def score_state(self, clusters: torch.Tensor, sizes: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of candidates ``items`` (B,) or (B, C) from cached ``user_state`` rows; equals ``forward``."""
        iv = self.item(items)
        interest = self.user.attend(clusters, sizes, iv)
        if items.dim() == 1:
            return self.base.score(torch.stack([interest, iv], dim=1))
        b, c = items.shape
        return self.base.score(torch.stack([interest, iv], dim=2).flatten(0, 1)).view(b, c)

    def representation_bytes(self) -> dict[str, int]:
        """Bytes of every tensor (parameters and stored tables) on the item side and on the user side; the
        online user encoder counts its weights (histories are read from the behaviour log)."""
        def size(*tensors_or_modules):
            out = 0
            for m in tensors_or_modules:
                ts = [m] if isinstance(m, torch.Tensor) else [*m.parameters(), *m.buffers()]
                out += sum(t.numel() * t.element_size() for t in ts)
            return out

        if self.hmi is not None:
            return {"item_bytes": size(self.item_codes, self.hmi.item), "user_bytes": size(self.user_codes, self.hmi.user)}
        item = size(self.item)
        user = size(self.user) - (item if self.needs_history else 0)  # the encoder reads the shared item side
        return {"item_bytes": item, "user_bytes": user}


def build_paradigm(spec: dict, assets: dict | None = None) -> ParadigmCTR:
    """``spec``: paradigm, base (a build_ctr spec without ids: model + kwargs), n_items, n_users, dim,
    item_sizes / user_sizes (token paradigms), text_dim (text items), z_dim (cached users), encoder
    (hidden, layers, heads, max_len, dropout), aggregation (uist), long (din / sim-hard / dmqn: codebooks,
    codewords, hstu_layers, heads, dropout, tau0, tau_min, anneal_steps, cluster_sizes, ctam, top_k,
    din_hidden). ``assets``:
    item_codes (n_items + 1, K), text (n_items + 1, D), user_codes (n_users, K_u), z (n_users, D_z),
    item_categories (n_items + 1,) for sim-hard and long.categories > 0 (category embeddings); zeros of the
    spec's shapes when
    omitted (``from_pretrained`` then loads the saved ones)."""
    p = spec["paradigm"]
    if p not in PARADIGMS:
        raise ValueError(f"unknown paradigm {p!r}: choose one of {', '.join(PARADIGMS)}")
    a, d, n, u = assets or {}, spec["dim"], spec["n_items"], spec["n_users"]
    base_spec = dict(spec["base"])
    base = MODELS[base_spec.pop("model")](n_features=0, n_fields=2, embedding_dim=d, **base_spec)
    side, kind = ITEM_SIDE[p], USER_SIDE[p]
    if kind == "tokens":
        ni, nu = len(spec["item_sizes"]), len(spec["user_sizes"])
        hmi = HMI(base, spec["user_sizes"], spec["item_sizes"], d, spec.get("aggregation", "hmi"))
        model = ParadigmCTR(p, base, None, None, hmi,
                            compact_codes(a.get("item_codes", torch.zeros(n + 1, ni, dtype=torch.long)), spec["item_sizes"]),
                            compact_codes(a.get("user_codes", torch.zeros(u, nu, dtype=torch.long)), spec["user_sizes"]))
        model.config = dict(spec)
        return model
    n_cat = spec.get("long", {}).get("categories", 0)
    if side == "id" and n_cat:
        item = IDCategoryTable(n + 1, d, a.get("item_categories", torch.zeros(n + 1, dtype=torch.int32)), n_cat)
    elif side == "id":
        item = IDTable(n + 1, d, padding_row=True)
    elif side == "text":
        item = FrozenVectors(a.get("text", torch.zeros(n + 1, spec.get("text_dim") or 1)), d, padding_row=True)
    else:
        k = len(spec["item_sizes"])
        item = TokenEmbeddings(a.get("item_codes", torch.zeros(n + 1, k, dtype=torch.long)), spec["item_sizes"], d,
                               padding_row=True)
    if kind == "id":
        user = IDTable(u, d, padding_row=False)
    elif kind == "cached":
        user = FrozenVectors(a.get("z", torch.zeros(u, spec.get("z_dim") or 1)), d, padding_row=False)
    elif kind == "target":
        ls = spec["long"]
        if p == "din":
            user = DINUser(item, d, ls["din_hidden"])
        elif p == "sim-hard":
            user = SIMHardUser(item, d, a.get("item_categories", torch.zeros(n + 1, dtype=torch.int32)), ls["top_k"],
                               ls["din_hidden"])
        else:
            user = DMQNUser(item, d, ls["codebooks"], ls["codewords"], 0 if p == "dmqn-simple" else ls["hstu_layers"],
                            ls["heads"], ls["dropout"], ls["tau0"], ls["tau_min"], ls["anneal_steps"],
                            ls.get("cluster_sizes", False),  # absent in models saved before the option
                            ls.get("ctam", "dot"),  # models saved before the sized CTAM: dot
                            ls["din_hidden"])
    else:
        e = spec["encoder"]
        user = SequenceEncoder(item, d, d, e["layers"], e["heads"], e["max_len"], e["dropout"])
    model = ParadigmCTR(p, base, item, user)
    model.config = dict(spec)
    return model


def save_pretrained(model: ParadigmCTR, directory, state: dict | None = None):
    from semrec.models import artefact

    return artefact.save_pretrained(model, directory, "ParadigmCTR", state)


def from_pretrained(directory, device: str = "cpu") -> ParadigmCTR:
    from semrec.models import artefact

    return artefact.from_pretrained(directory, "ParadigmCTR", build_paradigm, device)
