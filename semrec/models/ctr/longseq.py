"""Long behaviour sequences: DMQN (Wei et al., SIGIR'25) and its baselines as candidate-aware user sides of
the CTR paradigms (``semrec.models.ctr.paradigms``). Each maps a user's behaviour item ids (B, L),
left-padded with 0, and the candidates' item vectors to one interest vector per (user, candidate).

- ``MultiCodebookQuantizer`` (MCQM, §2.2): N independent codebooks of W codewords; per codebook a linear
  projection of the behaviour embeddings, dot-product scores against the codewords, Gumbel-softmax with an
  annealed temperature while training (straight-through one-hot), argmax at inference; behaviours are
  average-pooled per codeword into N x W interest clusters. A codeword no behaviour chose is an *empty*
  cluster: zero, and masked out of everything after it. The temperature divides the scores before the
  Gumbel noise, so training's hard choices converge to inference's argmax as it anneals. ``cluster_sizes``
  adds a learned map (zero at the start) of log(1 + behaviours in the cluster): the average alone keeps what
  an interest looks like, not how often it occurs.
- ``HSTULayer`` (ICIM, §2.3): f1 -> SiLU -> split U, V, Q, K; SiLU(QK^T + relative cluster bias) V over
  the non-empty clusters (divided by their count); LayerNorm, gated by U; f2; residual. ``hstu_reference``
  is the same layer written as explicit loops over users, heads and clusters: the batched layer must equal
  it (tests/test_longseq.py).
- ``TargetAttention`` (CTAM, §2.4): scaled dot-product attention of each candidate over the clusters, queries
  and keys LayerNorm-ed (the embedding L2 penalty keeps item vectors ~1e-2, where raw dot products leave the
  softmax uniform and DMQN learned nothing on some seeds). Cluster-aware (``sized``, the default): each
  cluster's logit gets + log(its size), so the softmax over clusters is the softmax over the N x L (codebook,
  behaviour) pairs, each pair standing for its cluster: the attention over the quantized sequence
  (``quantized_attention_reference`` spells it out; tests/test_longseq.py checks them equal). Without it
  (``dot``) a cluster of 3 behaviours weighs as much as one of 300.
- ``DMQNUser``: ``state(history)`` = MCQM + ICIM, the candidate-independent part (what the per-user cache
  holds: the clusters and their sizes); ``attend(state, candidates)`` = CTAM. ``hstu_layers=0`` is DMQN-simple
  (the paper's ablation).
- ``DINUser``: DIN's activation unit (MLP over [q, k, q - k, q * k]) weighting the last ``max_len``
  behaviours, unnormalised as in DIN: DIN-short (max_len 50) or DIN-full (max_len = the whole sequence).
- ``SIMHardUser``: SIM's hard search: the ``top_k`` most recent behaviours of the candidate's category,
  then the same DIN attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from semrec.models.ctr.layers import MLP


class MultiCodebookQuantizer(nn.Module):
    """``forward(e, valid)``: behaviour embeddings (B, L, d) and a validity mask (B, L) -> clusters (B, N*W, d)
    and their sizes (B, N*W): how many behaviours chose each codeword (0: an empty cluster, masked after)."""

    def __init__(self, dim: int, codebooks: int = 8, codewords: int = 8, tau0: float = 1.0,
                 tau_min: float = 0.1, anneal_steps: int = 2000, cluster_sizes: bool = False):
        super().__init__()
        self.size = None
        if cluster_sizes:  # zero at the start: the paper's average pooling until the sizes prove useful
            self.size = nn.Linear(1, dim, bias=False)
            nn.init.zeros_(self.size.weight)
        self.n, self.w, self.tau0, self.tau_min, self.anneal_steps = codebooks, codewords, tau0, tau_min, anneal_steps
        self.norm = nn.LayerNorm(dim)  # scores see unit-scale behaviours, so they compete with the Gumbel noise
        self.proj = nn.Parameter(torch.empty(codebooks, dim, dim))
        self.codewords = nn.Parameter(torch.empty(codebooks, codewords, dim))
        nn.init.xavier_uniform_(self.proj.view(codebooks * dim, dim))
        nn.init.normal_(self.codewords, std=1 / math.sqrt(dim))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training forwards: the annealing clock

    def tau(self) -> float:
        return max(self.tau_min, self.tau0 * math.exp(-int(self.steps) / self.anneal_steps))

    def scores(self, e: torch.Tensor) -> torch.Tensor:
        """(B, N, L, W) dot products of each codebook's projection of the behaviours with its codewords."""
        return torch.einsum("bnle,nwe->bnlw", torch.einsum("bld,nde->bnle", self.norm(e), self.proj), self.codewords)

    def assign(self, e: torch.Tensor) -> torch.Tensor:
        """(B, N, L, W) one-hot codeword choices (training): Gumbel-softmax over the scores divided by the
        annealed temperature, straight-through. Dividing the logits (not only the relaxation) is what makes
        training converge to inference: the hard sample argmax(s / tau + g) = argmax(s + tau g) tends to the
        argmax of inference as tau falls, while F.gumbel_softmax(s, tau) alone samples argmax(s + g) at every
        tau, so training never sees the assignment inference makes."""
        self.steps += 1
        return F.gumbel_softmax(self.scores(e) / self.tau(), tau=1.0, hard=True, dim=-1)

    def forward(self, e: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, length, d = e.shape
        w = valid.to(e.dtype)
        if self.training:
            onehot = self.assign(e) * w[:, None, :, None]
            counts = onehot.sum(2)  # (B, N, W)
            sums = torch.einsum("bnlw,bld->bnwd", onehot, e)
        else:  # argmax, pooled by scatter: no (B, N, L, W) one-hot (int64 at L = 10k it would be GBs)
            idx = self.scores(e).argmax(-1)  # (B, N, L)
            counts = e.new_zeros(b, self.n, self.w).scatter_add_(2, idx, w[:, None, :].expand(b, self.n, length))
            sums = e.new_zeros(b, self.n, self.w, d).scatter_add_(
                2, idx[..., None].expand(b, self.n, length, d), (e * w[..., None])[:, None].expand(b, self.n, length, d))
        clusters = sums / counts.clamp(min=1.0).unsqueeze(-1)
        counts = counts.detach()  # integers (straight-through one-hots sum to them): not a path for gradients
        if self.size is not None:
            clusters = clusters + self.size(torch.log1p(counts).unsqueeze(-1)) * (counts > 0.5).unsqueeze(-1)
        return clusters.reshape(b, self.n * self.w, -1), counts.reshape(b, self.n * self.w)


class HSTULayer(nn.Module):
    """One HSTU layer over ``positions`` clusters (pre-LayerNorm, residual); empty clusters stay zero."""

    def __init__(self, dim: int, positions: int, heads: int = 1, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"HSTU width {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.inp_norm = nn.LayerNorm(dim)
        self.f1 = nn.Linear(dim, 4 * dim)
        self.bias = nn.Parameter(torch.zeros(heads, positions, positions))  # relative cluster bias
        self.norm = nn.LayerNorm(dim)
        self.f2 = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads
        u, v, q, k = F.silu(self.f1(self.inp_norm(x))).split(d, dim=-1)
        q, k, v = (a.view(b, t, h, d // h).transpose(1, 2) for a in (q, k, v))  # (B, H, T, d/h)
        m = valid.to(x.dtype)
        a = F.silu(q @ k.transpose(-1, -2) + self.bias) * m[:, None, None, :] / m.sum(1).clamp(min=1)[:, None, None, None]
        o = (a @ v).transpose(1, 2).reshape(b, t, d)
        return (x + self.dropout(self.f2(self.norm(o) * u))) * m.unsqueeze(-1)


def hstu_reference(layer: HSTULayer, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``layer`` (in eval mode) as explicit loops over users, heads and the non-empty clusters."""
    b, t, d = x.shape
    h = layer.heads
    dh = d // h
    out = torch.zeros_like(x)
    for i in range(b):
        idx = valid[i].nonzero().flatten().tolist()
        n = len(idx)
        for p in idx:
            xp = x[i, p]
            proj = F.silu(layer.f1(layer.inp_norm(xp)))
            u = proj[:d]
            o = torch.zeros(d, dtype=x.dtype)
            for head in range(h):
                sl = slice(head * dh, (head + 1) * dh)
                q = proj[2 * d:3 * d][sl]
                for r in idx:
                    pr = F.silu(layer.f1(layer.inp_norm(x[i, r])))
                    k, v = pr[3 * d:][sl], pr[d:2 * d][sl]
                    o[sl] += F.silu(q @ k + layer.bias[head, p, r]) / n * v
            out[i, p] = xp + layer.f2(layer.norm(o) * u)
    return out


class TargetAttention(nn.Module):
    """Candidates (B, C, d) over clusters (B, T, d) of sizes (B, T) (0 = empty) -> (B, C, d); ``sized`` adds
    log(size) to each cluster's logit."""

    def __init__(self, dim: int, sized: bool = True):
        super().__init__()
        self.sized = sized
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_norm, self.k_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def logits(self, cand: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
        return self.q(self.q_norm(cand)) @ self.k(self.k_norm(clusters)).transpose(1, 2) / math.sqrt(cand.shape[-1])

    def forward(self, cand: torch.Tensor, clusters: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        s = self.logits(cand, clusters)
        if self.sized:
            s = s + torch.log(sizes.clamp(min=1.0))[:, None, :]
        s = s.masked_fill(~(sizes > 0.5)[:, None, :], float("-inf"))
        return torch.softmax(s, dim=-1) @ self.v(clusters)


def quantized_attention_reference(ctam: TargetAttention, cand: torch.Tensor, clusters: torch.Tensor,
                                  codes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Cluster-aware CTAM written as plain softmax attention over the quantized sequence: candidates (B, C, d)
    over every (codebook n, behaviour l) pair of the valid behaviours, the pair's key and value being its
    cluster's, ``clusters[b, n * W + codes[b, n, l]]`` (codes (B, N, L): MCQM's argmax; W = T / N)."""
    b, n, length = codes.shape
    w = clusters.shape[1] // n
    out = []
    for i in range(b):
        rows = [k * w + int(codes[i, k, j]) for k in range(n) for j in range(length) if valid[i, j]]
        seq = clusters[i, rows][None]  # (1, pairs, d): the quantized sequence, one entry per pair
        s = ctam.logits(cand[i:i + 1], seq)
        out.append(torch.softmax(s, dim=-1) @ ctam.v(seq))
    return torch.cat(out)


def _candidates(cand: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(B, d) -> (B, 1, d) and a flag to squeeze the result back."""
    return (cand.unsqueeze(1), True) if cand.dim() == 2 else (cand, False)


class DMQNUser(nn.Module):
    """``forward(history, cand_vec, cand_ids)`` -> interest (B, d) for cand_vec (B, d), or (B, C, d) for
    (B, C, d). ``state`` + ``attend`` split it at the cache boundary."""

    def __init__(self, items: nn.Module, dim: int, codebooks: int = 8, codewords: int = 8, hstu_layers: int = 1,
                 heads: int = 1, dropout: float = 0.0, tau0: float = 1.0, tau_min: float = 0.1,
                 anneal_steps: int = 2000, cluster_sizes: bool = False, ctam: str = "sized",
                 din_hidden: list[int] = (64, 32)):
        super().__init__()
        self.items = items
        self.mcqm = MultiCodebookQuantizer(dim, codebooks, codewords, tau0, tau_min, anneal_steps, cluster_sizes)
        self.icim = nn.ModuleList(HSTULayer(dim, codebooks * codewords, heads, dropout) for _ in range(hstu_layers))
        if ctam not in ("sized", "dot", "din"):
            raise ValueError(f"ctam {ctam!r}: one of sized, dot, din")
        self.ctam = ClusterActivation(dim, list(din_hidden)) if ctam == "din" else TargetAttention(dim, ctam == "sized")

    def state(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(clusters (B, N*W, d), sizes (B, N*W): behaviours per cluster, 0 = empty): candidate-independent."""
        valid = history > 0
        if not valid.any(dim=1).all():
            raise ValueError(f"row {int((~valid.any(dim=1)).nonzero()[0, 0])} has no behaviours: a user needs at least one")
        r, sizes = self.mcqm(self.items(history), valid)
        for layer in self.icim:
            r = layer(r, sizes > 0.5)
        return r, sizes

    def attend(self, clusters: torch.Tensor, sizes: torch.Tensor, cand_vec: torch.Tensor) -> torch.Tensor:
        c, squeeze = _candidates(cand_vec)
        out = self.ctam(c, clusters, sizes)
        return out.squeeze(1) if squeeze else out

    def forward(self, history: torch.Tensor, cand_vec: torch.Tensor, cand_ids: torch.Tensor) -> torch.Tensor:
        return self.attend(*self.state(history), cand_vec)


class ActivationUnit(nn.Module):
    """DIN's attention weight of behaviour k for candidate q: MLP([q, k, q - k, q * k]) -> scalar."""

    def __init__(self, dim: int, hidden: list[int]):
        super().__init__()
        self.mlp = MLP(4 * dim, hidden, output_dim=1, activation=nn.PReLU)

    def forward(self, q: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """q (B, C, d), keys (B, C, L, d), valid (B, C, L) -> sum_l w_l keys_l (B, C, d)."""
        qq = q.unsqueeze(2).expand_as(keys)
        w = self.mlp(torch.cat([qq, keys, qq - keys, qq * keys], dim=-1)).squeeze(-1) * valid.to(keys.dtype)
        return (w.unsqueeze(-1) * keys).sum(2)


class ClusterActivation(nn.Module):
    """CTAM as DIN's target attention: candidates (B, C, d) over clusters (B, T, d) of sizes (B, T) (0 =
    empty) -> (B, C, d) with the activation unit's unnormalised weights."""

    def __init__(self, dim: int, hidden: list[int]):
        super().__init__()
        self.unit = ActivationUnit(dim, hidden)

    def forward(self, cand: torch.Tensor, clusters: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        c = cand.shape[1]
        return self.unit(cand, clusters.unsqueeze(1).expand(-1, c, -1, -1), (sizes > 0.5).unsqueeze(1).expand(-1, c, -1))


class DINUser(nn.Module):
    """Target attention over the last ``max_len`` behaviours (the input is already cut to them)."""

    def __init__(self, items: nn.Module, dim: int, hidden: list[int] = (64, 32)):
        super().__init__()
        self.items = items
        self.unit = ActivationUnit(dim, list(hidden))

    def forward(self, history: torch.Tensor, cand_vec: torch.Tensor, cand_ids: torch.Tensor) -> torch.Tensor:
        c, squeeze = _candidates(cand_vec)
        keys = self.items(history).unsqueeze(1).expand(-1, c.shape[1], -1, -1)
        valid = (history > 0).unsqueeze(1).expand(-1, c.shape[1], -1)
        out = self.unit(c, keys, valid)
        return out.squeeze(1) if squeeze else out


class SIMHardUser(nn.Module):
    """SIM hard search: per candidate, the ``top_k`` most recent behaviours sharing its category (a buffer
    of per-item category ids, 0 = padding / no category), then DIN attention; no match gives a zero interest."""

    def __init__(self, items: nn.Module, dim: int, categories: torch.Tensor, top_k: int = 50,
                 hidden: list[int] = (64, 32)):
        super().__init__()
        self.items, self.top_k = items, top_k
        self.register_buffer("categories", categories.to(torch.int32))
        self.unit = ActivationUnit(dim, list(hidden))

    def search(self, history: torch.Tensor, cand_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, k) positions of the retrieved behaviours (most recent first) and their mask."""
        hc = self.categories[history]  # (B, L)
        match = (hc.unsqueeze(1) == self.categories[cand_ids].unsqueeze(-1)) & (history > 0).unsqueeze(1) & \
            (hc > 0).unsqueeze(1)  # category 0: padding or an item without one, never a match
        pos = torch.arange(history.shape[1], device=history.device)
        k = min(self.top_k, history.shape[1])
        rank, idx = torch.where(match, pos, -1).topk(k, dim=-1)  # latest matching positions
        return idx, rank >= 0

    def forward(self, history: torch.Tensor, cand_vec: torch.Tensor, cand_ids: torch.Tensor) -> torch.Tensor:
        c, squeeze = _candidates(cand_vec)
        ids = cand_ids.unsqueeze(1) if squeeze else cand_ids
        idx, valid = self.search(history, ids)
        picked = torch.gather(history.unsqueeze(1).expand(-1, ids.shape[1], -1), 2, idx) * valid
        out = self.unit(c, self.items(picked), valid)
        return out.squeeze(1) if squeeze else out
