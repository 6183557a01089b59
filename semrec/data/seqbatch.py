"""Batches of user sequences as flat arrays, and the leave-one-out examples built from them.

One code path for every source of rows: the in-memory table (small data, ``Sequences.batch``) and a
Ray Data stream of ``user_sequences`` blocks (``RowBatch.from_arrow``). Everything a batch needs is in
its own rows, so examples can be built inside a stream without any global index:

- training example of a user (S3-Rec): inputs s[:-2][:-1], next-item targets s[:-2][1:], left-padded;
- training negatives: one per target position, uniform over items outside the user's whole sequence,
  drawn from a hash of (seed, epoch, user, position, attempt) -- the same negative for the same user
  whichever worker, batch or source the row comes through;
- evaluation: history s[:-2] -> target s[-2] (valid) or s[:-1] -> s[-1] (test), and, for streams,
  ``k`` distinct sampled negatives outside the user's sequence from a hash of (seed, user).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from semrec.data.hashing import hash_rows
from semrec.errors import InputError

MIN_LENGTH = 3
_MAX_ROUNDS = 16  # resampling rounds for negatives that hit a user's own item (then: pick from what is left)


@dataclass
class RowBatch:
    """Users and their chronological item ids: ``flat[offsets[i]:offsets[i+1]]`` is user ``user_ids[i]``'s."""

    user_ids: np.ndarray  # (B,) int64
    offsets: np.ndarray  # (B + 1,) int64
    flat: np.ndarray  # (sum of lengths,) int64

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_arrow(cls, table: pa.Table) -> "RowBatch":
        col = table.column("item_ids").combine_chunks()
        offsets = col.offsets.to_numpy().astype(np.int64)  # of a sliced array: not rebased, into .values
        flat = col.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]].astype(np.int64, copy=False)
        return cls(table.column("user_id").to_numpy().astype(np.int64, copy=False), offsets - offsets[0], flat)

    @classmethod
    def concat(cls, batches: list["RowBatch"]) -> "RowBatch":
        if len(batches) == 1:
            return batches[0]
        sizes = np.cumsum([0] + [len(b.flat) for b in batches[:-1]])
        offsets = np.concatenate([[0]] + [b.offsets[1:] + s for b, s in zip(batches, sizes)])
        return cls(np.concatenate([b.user_ids for b in batches]), offsets.astype(np.int64),
                   np.concatenate([b.flat for b in batches]))

    def take(self, rows: np.ndarray) -> "RowBatch":
        lengths = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        idx = np.repeat(self.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return RowBatch(self.user_ids[rows], offsets, self.flat[idx])

    def check(self, n_items: int | None, where: str, min_length: int = MIN_LENGTH, why: str = "leave-one-out") -> None:
        """Refuse sequences shorter than ``min_length`` and item ids outside 1..n_items, naming the user."""
        short = self.lengths < min_length
        if short.any():
            i = int(np.argmax(short))
            raise InputError(f"{where}: user {self.user_ids[i]} has {self.lengths[i]} items; {why} needs "
                             f"at least {min_length}")
        if not len(self.flat):
            return
        low, high = self.flat.min() < 1, n_items is not None and self.flat.max() > n_items
        if low or high:  # only now the position (and its user): the scan of a large block allocates nothing more
            j = int(np.argmax(self.flat < 1)) if low else int(np.argmax(self.flat > n_items))
            user = self.user_ids[np.searchsorted(self.offsets, j, side="right") - 1]
            if low:
                raise InputError(f"{where}: user {user} has item id < 1 (ids are 1-based, 0 is padding)")
            raise InputError(f"{where}: user {user} has item id {self.flat[j]} outside the catalogue 1..{n_items}")

    def seen(self, rows: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
        """Whether ``items[i, j]`` is in the sequence of row ``rows[i]`` (vectorised over the batch)."""
        base = np.int64(n_items + 1)
        if getattr(self, "_keys", (None,))[0] != n_items:  # sorted (row, item) keys, built once per batch
            self._keys = (n_items, np.unique(np.repeat(np.arange(len(self), dtype=np.int64), self.lengths) * base
                                             + self.flat))
        keys = self._keys[1]
        k = rows[:, None].astype(np.int64) * base + items
        pos = np.minimum(np.searchsorted(keys, k), max(len(keys) - 1, 0))
        return keys[pos] == k if len(keys) else np.zeros(k.shape, dtype=bool)


def left_pad(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, max_len: int) -> np.ndarray:
    """(B, max_len): row i is the last ``max_len`` of ``flat[starts[i]:starts[i]+lengths[i]]``, right-aligned,
    0-padded on the left."""
    j = np.arange(max_len)
    valid = j[None, :] >= max_len - np.minimum(lengths, max_len)[:, None]
    idx = (starts + lengths - max_len)[:, None] + j[None, :]
    return np.where(valid, flat[np.clip(idx, 0, max(len(flat) - 1, 0))] if len(flat) else 0, 0).astype(np.int64)


def hashed_items(n_items: int, *keys: np.ndarray) -> np.ndarray:
    """Uniform item ids in 1..n_items from a stable hash of the broadcast integer ``keys``."""
    cols = np.broadcast_arrays(*[np.asarray(k, dtype=np.int64) for k in keys])
    shape = cols[0].shape
    h = hash_rows(np.stack([c.ravel() for c in cols], axis=1))
    return (h % np.uint64(n_items)).astype(np.int64).reshape(shape) + 1


def _outside(batch: RowBatch, n_items: int, key: tuple[int, ...], slots: np.ndarray, distinct: bool) -> np.ndarray:
    """(B, S) items outside each row's sequence, hashed from (key, user, slot, attempt); with ``distinct``
    also distinct within a row."""
    users = batch.user_ids[:, None]
    rows = np.arange(len(batch))
    extra = [np.int64(k) for k in key]
    out = hashed_items(n_items, *extra, users, slots, np.int64(0))
    for attempt in range(1, _MAX_ROUNDS + 1):
        bad = batch.seen(rows, out, n_items)
        if distinct and out.shape[1] > 1:
            order = np.argsort(out, axis=1, kind="stable")
            s = np.take_along_axis(out, order, axis=1)
            dup = np.zeros_like(bad)
            np.put_along_axis(dup, order[:, 1:], s[:, 1:] == s[:, :-1], axis=1)
            bad |= dup
        if not bad.any():
            return out
        fresh = hashed_items(n_items, *extra, users, slots, np.int64(attempt))
        out = np.where(bad, fresh, out)
    for r in np.flatnonzero(bad.any(axis=1)):  # nearly exhausted catalogue: pick from what is left, by hash
        seq = batch.flat[batch.offsets[r]:batch.offsets[r + 1]]
        keep = out[r][~bad[r]]
        free = np.setdiff1d(np.arange(1, n_items + 1), np.concatenate([seq, keep if distinct else []]))
        if distinct and len(free) < bad[r].sum() or not len(free):
            raise InputError(f"user {batch.user_ids[r]}: cannot draw {out.shape[1]} negatives outside its "
                             f"{batch.lengths[r]} items from a catalogue of {n_items}")
        order = np.argsort(hash_rows(np.stack(np.broadcast_arrays(*extra, batch.user_ids[r], free), axis=1)),
                           kind="stable")
        picks = free[order]
        out[r, bad[r]] = picks[:bad[r].sum()] if distinct else picks[np.arange(bad[r].sum()) % len(picks)]
    return out


def train_examples(batch: RowBatch, max_len: int, n_items: int, seed: int,
                   epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, negatives), each (B, max_len): S3-Rec's training example per user and one negative
    per target position (0 where the target is padding)."""
    n = np.maximum(batch.lengths - 3, 0)  # training targets s[1:-2]
    starts = batch.offsets[:-1]
    inputs = left_pad(batch.flat, starts, n, max_len)
    targets = left_pad(batch.flat, starts + 1, n, max_len)
    position = (n - max_len)[:, None] + np.arange(max_len)[None, :] + 1  # the target's index in the sequence
    neg = _outside(batch, n_items, (seed, epoch, 1), position, distinct=False)
    return inputs, targets, np.where(targets > 0, neg, 0)


def eval_examples(batch: RowBatch, max_len: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(histories (B, max_len), targets (B,)): valid = s[:-2] -> s[-2]; test = s[:-1] -> s[-1]."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be valid or test, got {split!r}")
    cut = 2 if split == "valid" else 1
    n = batch.lengths - cut
    return left_pad(batch.flat, batch.offsets[:-1], n, max_len), batch.flat[batch.offsets[:-1] + n]


def eval_negatives(batch: RowBatch, k: int, n_items: int, seed: int) -> np.ndarray:
    """(B, k) distinct items outside each user's sequence, from a hash of (seed, user): the same for a user
    in every run, on any number of workers, without a stored file."""
    if n_items - 1 < k:
        raise InputError(f"cannot draw {k} negatives from a catalogue of {n_items} items")
    full = batch.lengths > n_items - k
    if full.any():
        raise InputError(f"user {batch.user_ids[np.argmax(full)]} has interacted with too many items to draw "
                         f"{k} negatives")
    return _outside(batch, n_items, (seed, 2), np.arange(k)[None, :], distinct=True)


def histories(batch: RowBatch, cut: int) -> list[np.ndarray]:
    """Each user's items except the last ``cut`` (what full ranking excludes)."""
    return [batch.flat[a:b - cut] for a, b in zip(batch.offsets[:-1], batch.offsets[1:])]


def shuffled_batches(blocks, batch_size: int, buffer: int, rng: np.random.Generator):
    """Batches of ``batch_size`` rows from a stream of RowBatch ``blocks``, shuffled within windows of about
    ``buffer`` rows (held at most: buffer + one block); the last batch may be smaller."""
    pending, held = [], 0
    for rows in blocks:
        pending.append(rows)
        held += len(rows)
        if held >= buffer:
            rows = RowBatch.concat(pending)
            perm = rng.permutation(len(rows))
            cut = len(rows) // batch_size * batch_size
            for i in range(0, cut, batch_size):
                yield rows.take(perm[i:i + batch_size])
            pending = [rows.take(perm[cut:])]
            held = len(pending[0])
    if held:
        rows = RowBatch.concat(pending)
        perm = rng.permutation(len(rows))
        for i in range(0, len(rows), batch_size):
            yield rows.take(perm[i:i + batch_size])


def length_grouped_batches(order: np.ndarray, lengths: np.ndarray, batch_size: int, pool: int,
                           rng: np.random.Generator) -> list[np.ndarray]:
    """Cut ``order`` (a permutation of example indices) into batches of ``batch_size``. With ``pool`` > 0 each
    run of ``pool * batch_size`` examples of ``order`` is first sorted by ``lengths`` (stable) and the batches
    are then shuffled by ``rng``: a batch holds examples of similar length, so it pays little padding, while
    which examples meet stays random (HF Trainer's ``group_by_length``, fairseq's buckets). Every example
    once; a pool's last batch may be smaller. ``pool`` = 0: plain consecutive batches of ``order``."""
    if not pool:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    span, batches = pool * batch_size, []
    for a in range(0, len(order), span):
        chunk = order[a:a + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def sample_rows(user_ids: np.ndarray, fraction: float, salt: int = 3) -> np.ndarray:
    """Rows of a fixed hash sample of about ``fraction`` of the users (the same users in every batch and run)."""
    if fraction >= 1:
        return np.arange(len(user_ids))
    h = hash_rows(np.stack([np.full(len(user_ids), salt, np.int64), user_ids.astype(np.int64)], axis=1))
    return np.flatnonzero(h < np.uint64(fraction * 2.0**64))


def rank_rows(user_ids: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rows whose user hashes to ``rank`` of ``world`` (a deterministic split of a stream over workers)."""
    if world == 1:
        return np.arange(len(user_ids))
    return np.flatnonzero(hash_rows(user_ids.astype(np.int64)) % np.uint64(world) == np.uint64(rank))
