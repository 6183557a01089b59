"""RQ-VAE: MLP encoder -> residual quantizer (L levels x C codes) -> MLP decoder.

Training follows TIGER / the unified semantic+ID paper (Algorithm 1):
loss = ||x - x_hat||^2 + sum_l ( ||sg[r_l] - e_l||^2 + beta * ||r_l - sg[e_l]||^2 ),
with a straight-through estimator from the decoder to the encoder.

Extras that make it usable on real catalogues:
- per-level distance objects (``euclidean``/``cosine``, or the ``hybrid`` preset: cosine on every
  level but the last, Euclidean on the last);
- k-means initialisation of level l on the residuals left by levels < l;
- dead-code restart: every ``restart_window`` steps, codes that no training row chose during the
  window are re-seeded to residuals of the current batch. Used codes are never touched.
"""

from __future__ import annotations

import logging
import math

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semrec.determinism import reproducible
from semrec.quant.base import ResidualQuantizer, as_float32
from semrec.quant.distances import Distance
from semrec.quant.residual import assign_fast

log = logging.getLogger(__name__)


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


MIN_POINTS_PER_CENTROID = 39  # faiss' own threshold for a warning
_warned: set[tuple[int, int]] = set()


def warn_small_sample(n: int, k: int) -> None:
    """One semrec warning per (rows, codes) and process when k-means has fewer than 39 points per code
    (faiss would print its own C++ warning once per level and k-means call)."""
    if n < MIN_POINTS_PER_CENTROID * k and (n, k) not in _warned:
        _warned.add((n, k))
        log.warning("fitting %d codes per level on %d rows (%.1f rows per code; k-means wants >= %d): codes will "
                    "be noisier and more items will share codes. Give more items (or a larger --fit_sample) or "
                    "fewer codes (--quantizer.codebook_size)", k, n, n / k, MIN_POINTS_PER_CENTROID)


def kmeans_centroids(x: np.ndarray, k: int, niter: int, seed: int, spherical: bool = False,
                     max_points_per_centroid: int = 256) -> np.ndarray:
    """faiss k-means; with fewer points than clusters, centroids are points drawn with replacement.
    Deterministic for the same inputs and seed at any thread count (measured)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    warn_small_sample(len(x), k)
    if len(x) < k:
        rng = np.random.default_rng(seed)
        return x[rng.integers(0, len(x), size=k)] + rng.normal(0, 1e-4, size=(k, x.shape[1])).astype(np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=spherical,
                      max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1, verbose=False)
    km.train(x)
    return km.centroids.copy()


class RQVAEModule(nn.Module):
    def __init__(self, input_dim: int, hidden: list[int], latent_dim: int, codebook_sizes: list[int]):
        super().__init__()
        self.encoder = mlp([input_dim, *hidden, latent_dim])
        self.decoder = mlp([latent_dim, *reversed(hidden), input_dim])
        self.codebooks = nn.ParameterList([nn.Parameter(torch.randn(c, latent_dim) * 0.01) for c in codebook_sizes])
        # per-dimension standardisation of the input, fitted on the training data: unit-norm text
        # embeddings have tiny per-dimension variance, which otherwise lets the quantization losses
        # dominate and collapse the latent space onto a few codes
        self.register_buffer("x_mean", torch.zeros(input_dim))
        self.register_buffer("x_std", torch.ones(input_dim))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.x_mean) / self.x_std

    def unstandardize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.x_std + self.x_mean

    def quantize(self, z: torch.Tensor, distances: list[Distance]):
        """Residual quantization with losses. Returns z_q (straight-through), codes, losses, level inputs."""
        r = z
        q = torch.zeros_like(z)
        codebook_loss = z.new_zeros(())
        commitment = z.new_zeros(())
        codes, level_inputs = [], []
        for cb, dist in zip(self.codebooks, distances):
            level_inputs.append(r.detach())
            idx = dist.assign(r.detach(), cb.detach())
            e = cb[idx]
            codebook_loss = codebook_loss + F.mse_loss(e, r.detach())
            commitment = commitment + F.mse_loss(r, e.detach())
            q = q + e
            r = r - e.detach()
            codes.append(idx)
        z_q = z + (q - z).detach()
        return z_q, torch.stack(codes, 1), codebook_loss, commitment, level_inputs


class RQVAE(ResidualQuantizer):
    kind = "rqvae"

    def __init__(self, levels: int = 3, codebook_size: int | list[int] = 256, distance: str | list[str] = "hybrid",
                 latent_dim: int = 64, hidden: list[int] = (512, 256, 128), beta: float = 0.25, epochs: int = 100,
                 batch_size: int = 1024, lr: float = 1e-3, weight_decay: float = 0.0, kmeans_init: bool = True,
                 kmeans_iters: int = 20, restart_window: int = 50, restart_until: float = 0.8, seed: int = 0,
                 device: str = "cpu"):
        super().__init__(levels, codebook_size, distance, latent_dim=latent_dim,
                         hidden=list(hidden), beta=beta, epochs=epochs, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, kmeans_init=kmeans_init, kmeans_iters=kmeans_iters,
                         restart_window=restart_window, restart_until=restart_until, seed=seed, device=device)
        self.device = torch.device(device)
        self.module: RQVAEModule | None = None
        self.history_: list[dict] = []

    def _build(self, input_dim: int) -> RQVAEModule:
        p = self.params
        return RQVAEModule(input_dim, p["hidden"], p["latent_dim"], self.codebook_sizes).to(self.device)

    # --- training --------------------------------------------------------------------------
    @torch.no_grad()
    def _kmeans_init(self, x: torch.Tensor, gen: torch.Generator) -> None:
        sample = x[torch.randperm(len(x), generator=gen)[:65_536].to(x.device)]
        r = self.module.encoder(sample).cpu().numpy()
        for level, (cb, dist) in enumerate(zip(self.module.codebooks, self.distances)):
            cent = kmeans_centroids(r, cb.shape[0], self.params["kmeans_iters"], self.params["seed"] + level)
            cb.data.copy_(torch.from_numpy(cent))
            r = r - cent[dist.search(r, cent)]

    @torch.no_grad()
    def restart_dead_codes(self, level: int, usage: torch.Tensor, level_input: torch.Tensor,
                           gen: torch.Generator, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Re-seed codes of ``level`` with zero ``usage`` to random rows of ``level_input``; returns how many."""
        dead = usage == 0
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        cb = self.module.codebooks[level]
        pick = torch.randint(0, len(level_input), (n_dead,), generator=gen).to(level_input.device)
        cb.data[dead] = level_input[pick]
        if optimizer is not None:  # forget Adam moments of the re-seeded rows only
            state = optimizer.state.get(cb, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][dead] = 0
        return n_dead

    def fit(self, x: np.ndarray) -> "RQVAE":
        """Train on ``x``; bit-identical for the same data and seed at any thread count, and the caller's
        global torch RNG state is left as it was (``semrec.determinism.reproducible``)."""
        with reproducible(self.params["seed"], self.device):
            return self._fit(as_float32(x))

    def _fit(self, x_np: np.ndarray) -> "RQVAE":
        p = self.params
        warn_small_sample(len(x_np), max(self.codebook_sizes))
        gen = torch.Generator().manual_seed(p["seed"])
        self.module = self._build(x_np.shape[1])
        self.fitted_ = {"input_dim": int(x_np.shape[1]), "train_rows": int(len(x_np))}
        xt = torch.from_numpy(x_np).to(self.device)
        self.module.x_mean.copy_(xt.mean(0))
        self.module.x_std.copy_(xt.std(0).clamp_min(1e-6) if len(xt) > 1 else torch.ones_like(xt[0]))
        xt = self.module.standardize(xt)
        if p["kmeans_init"]:
            self._kmeans_init(xt, gen)
        opt = torch.optim.Adam(self.module.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        bs = min(p["batch_size"], len(xt))
        steps_per_epoch = math.ceil(len(xt) / bs)
        total = steps_per_epoch * p["epochs"]
        usage = [torch.zeros(c, dtype=torch.long, device=self.device) for c in self.codebook_sizes]
        step = 0
        restarts = 0
        self.module.train()
        for epoch in range(p["epochs"]):
            perm = torch.randperm(len(xt), generator=gen).to(self.device)
            sums = np.zeros(3)
            for b in range(steps_per_epoch):
                xb = xt[perm[b * bs:(b + 1) * bs]]
                z = self.module.encoder(xb)
                z_q, codes, cb_loss, commit, level_inputs = self.module.quantize(z, self.distances)
                recon = F.mse_loss(self.module.decoder(z_q), xb)
                loss = recon + cb_loss + p["beta"] * commit
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums += [recon.item(), cb_loss.item(), commit.item()]
                step += 1
                for level in range(self.levels):
                    usage[level] += torch.bincount(codes[:, level], minlength=usage[level].numel())
                if p["restart_window"] and step % p["restart_window"] == 0:
                    if step <= p["restart_until"] * total:
                        for level in range(self.levels):
                            restarts += self.restart_dead_codes(level, usage[level], level_inputs[level], gen, opt)
                    for u in usage:
                        u.zero_()
            rec = {"epoch": epoch, "recon": sums[0] / steps_per_epoch, "codebook": sums[1] / steps_per_epoch,
                   "commitment": sums[2] / steps_per_epoch}
            self.history_.append(rec)
            if epoch % 10 == 0 or epoch == p["epochs"] - 1:
                log.info("rqvae epoch %d/%d recon %.5f codebook %.5f commit %.5f",
                         epoch + 1, p["epochs"], rec["recon"], rec["codebook"], rec["commitment"])
        self.module.eval()
        self.fitted_.update({"steps": step, "restarted_codes": restarts,
                             "final_losses": {k: round(v, 6) for k, v in self.history_[-1].items() if k != "epoch"}})
        return self

    # --- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def latents(self, x: np.ndarray, chunk: int = 65_536) -> np.ndarray:
        self._check_fitted()
        x = as_float32(x)
        m = self.module
        out = [m.encoder(m.standardize(torch.from_numpy(x[i:i + chunk]).to(self.device))).cpu().numpy()
               for i in range(0, len(x), chunk)]
        return np.concatenate(out)

    def codebooks_np(self) -> list[np.ndarray]:
        return [cb.detach().cpu().numpy() for cb in self.module.codebooks]

    def encode(self, x: np.ndarray) -> np.ndarray:
        return assign_fast(self.latents(x), self.codebooks_np(), self.distances)

    @torch.no_grad()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._check_fitted()
        c = torch.as_tensor(np.asarray(codes, dtype=np.int64), device=self.device)
        q = sum(cb[c[:, level]] for level, cb in enumerate(self.module.codebooks))
        return self.module.unstandardize(self.module.decoder(q)).cpu().numpy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return dict(self.module.state_dict())

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module = self._build(self.fitted_["input_dim"])
        self.module.load_state_dict(state)
        self.module.eval()
