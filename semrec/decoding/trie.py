"""A prefix trie of every item's code sequence, as flat arrays that are saved and memory-mapped.

Nodes are numbered breadth-first: the root is 0, then every node of depth 1, ..., the leaves (depth L, one per
item) last; within a depth, nodes are in lexicographic order of their prefixes. Three arrays hold the trie:

- ``child_start`` (internal nodes + 1, int64): the children of internal node g are the node ids
  ``child_start[g] .. child_start[g + 1] - 1``, in ascending code order (CSR);
- ``key`` (nodes, int64): ``parent * width + code`` of each node (the root: -1). Because children are
  contiguous and parents ascend, ``key`` is sorted, so the child of g with code c is one binary search
  (``np.searchsorted(key, g * width + c)``) for any number of (g, c) pairs at once;
- ``items`` (leaves, int64): the item id of each leaf.

Memory is O(items x levels) (8 bytes per node + 8 per internal node + 8 per item); a decoding step touches
only the children of the current beams, whatever the catalogue size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from semrec.errors import InputError

TRIE_META = "trie.json"
FORMAT_VERSION = 1


class CodeTrie:
    def __init__(self, child_start: np.ndarray, key: np.ndarray, items: np.ndarray, sizes: list[int],
                 depth_start: list[int]):
        self.child_start, self.key, self.items = child_start, key, items
        self.sizes, self.levels = [int(s) for s in sizes], len(sizes)
        self.width = max(self.sizes)
        self.depth_start = [int(d) for d in depth_start]  # first node id of each depth, then the node count
        self.leaf_start = self.depth_start[self.levels]

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, item_ids: np.ndarray, codes: np.ndarray, sizes: list[int] | None = None,
              source: str = "codes") -> "CodeTrie":
        """From ``codes`` (N, L) non-negative ints (one row per item, e.g. c0..c{K-1} + suffix) and their item
        ids. Duplicate code sequences or item ids are refused, naming them."""
        codes = np.asarray(codes, dtype=np.int64)
        item_ids = np.asarray(item_ids, dtype=np.int64)
        if codes.ndim != 2 or len(codes) != len(item_ids) or not len(codes):
            raise InputError(f"{source}: need one code row per item (got codes {codes.shape}, {len(item_ids)} ids)")
        n, levels = codes.shape
        if (codes < 0).any():
            raise InputError(f"{source}: negative code at item {int(item_ids[np.argmax((codes < 0).any(1))])}")
        sizes = [int(s) for s in (sizes or (codes.max(0) + 1))]
        over = codes >= np.asarray(sizes)[None, :]
        if over.any():
            r, c = np.argwhere(over)[0]
            raise InputError(f"{source}: item {int(item_ids[r])} has code {int(codes[r, c])} at level {int(c)}, "
                             f">= its codebook size {sizes[c]}")
        ids_sorted = np.sort(item_ids)
        dup_id = np.flatnonzero(ids_sorted[1:] == ids_sorted[:-1])
        if len(dup_id):
            raise InputError(f"{source}: item {int(ids_sorted[dup_id[0]])} appears more than once")
        order = np.lexsort(codes.T[::-1])  # primary key: level 0
        s, ids = codes[order], item_ids[order]
        same = (s[1:] == s[:-1]).all(1)
        if same.any():
            i = int(np.argmax(same))
            dups = ids[i:i + 2].tolist()
            raise InputError(f"{source}: items {dups[0]} and {dups[1]} share the code sequence "
                             f"{s[i].tolist()}: a trie needs one sequence per item (add the collision suffix)")
        width = max(sizes)
        new = np.zeros(n, dtype=bool)
        node_prev = np.zeros(n, dtype=np.int64)  # each row's node at the previous depth (global id)
        depth_start, keys, child_start = [0, 1], [np.array([-1], dtype=np.int64)], []
        for level in range(levels):
            new[0] = True
            new[1:] |= s[1:, level] != s[:-1, level]
            first = np.flatnonzero(new)  # rows where a node of depth level + 1 starts
            nodes_here = len(first)
            base = depth_start[-1]
            parents = node_prev[first]
            keys.append(parents * width + s[first, level])
            # children of the previous depth's nodes: contiguous, parents ascending
            prev_first, prev_count = depth_start[-2], base - depth_start[-2]
            counts = np.bincount(parents - prev_first, minlength=prev_count)
            child_start.append(base + np.concatenate([[0], np.cumsum(counts)[:-1]]))
            node_prev = base + np.cumsum(new) - 1
            depth_start.append(base + nodes_here)
        child_start.append(np.array([depth_start[-1]], dtype=np.int64))  # the end of the last internal range
        return cls(np.concatenate(child_start).astype(np.int64), np.concatenate(keys), ids, sizes, depth_start)

    @classmethod
    def from_token_table(cls, path: str | Path, use_suffix: bool = True) -> "CodeTrie":
        """From a semrec token table (``token_table/`` of ``tokenize_items``, or its folder), reading only the id
        and code columns, file by file, into one preallocated array."""
        import pyarrow.parquet as pq

        from semrec.data.io import count_rows, parquet_files
        from semrec.schemas import decode_metadata

        p = Path(path)
        p = p / "token_table" if (p / "token_table").is_dir() else p
        files = parquet_files(p, "token table")
        meta = decode_metadata(pq.read_schema(files[0]))
        sizes = list(meta.get("codebook_sizes") or [])
        if not sizes:
            raise InputError(f"{files[0]}: no semrec.codebook_sizes metadata (not a semrec token table)")
        cols = [f"c{j}" for j in range(len(sizes))] + (["suffix"] if use_suffix else [])
        n = count_rows(files)
        ids, codes, row = np.empty(n, np.int64), np.empty((n, len(cols)), np.int64), 0
        for f in files:
            names = pq.read_schema(f).names
            missing = [c for c in ["item_id", *cols] if c not in names]
            if missing:
                raise InputError(f"{f}: missing column(s) {missing} of a token table")
            t = pq.read_table(f, columns=["item_id", *cols])
            k = t.num_rows
            ids[row:row + k] = t.column("item_id").to_numpy()
            for j, c in enumerate(cols):
                codes[row:row + k, j] = t.column(c).to_numpy()
            row += k
        if use_suffix:
            sizes = sizes + [int(codes[:, -1].max()) + 1]
        return cls.build(ids, codes, sizes, source=str(p))

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for name in ("child_start", "key", "items"):
            np.save(d / f"{name}.npy", np.ascontiguousarray(getattr(self, name)))
        (d / TRIE_META).write_text(json.dumps({"format_version": FORMAT_VERSION, "sizes": self.sizes,
                                               "depth_start": self.depth_start, "items": len(self.items)},
                                              indent=2) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> "CodeTrie":
        d = Path(directory)
        try:
            meta = json.loads((d / TRIE_META).read_text())
            arrays = [np.load(d / f"{n}.npy", mmap_mode="r" if mmap else None)
                      for n in ("child_start", "key", "items")]
        except (OSError, ValueError) as e:
            raise InputError(f"{d}: not a saved code trie ({e})") from None
        return cls(*arrays, meta["sizes"], meta["depth_start"])

    @property
    def nbytes(self) -> int:
        return int(self.child_start.nbytes + self.key.nbytes + self.items.nbytes)

    # ------------------------------------------------------------------ queries
    def expand(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every child of each of ``nodes`` (internal, any depth): (index into ``nodes``, child code, child id),
        grouped by parent in the order given, codes ascending within a parent."""
        nodes = np.asarray(nodes, dtype=np.int64)
        a, b = self.child_start[nodes], self.child_start[nodes + 1]
        counts = b - a
        parent = np.repeat(np.arange(len(nodes)), counts)
        child = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(a - (np.cumsum(counts) - counts), counts)
        return parent, np.asarray(self.key[child]) % self.width, child

    def child(self, nodes: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """The child of each node by each code, -1 where it does not exist (vectorised binary search)."""
        nodes, codes = np.asarray(nodes, dtype=np.int64), np.asarray(codes, dtype=np.int64)
        q = nodes * self.width + codes
        pos = np.minimum(np.searchsorted(self.key, q), len(self.key) - 1)
        ok = (np.asarray(self.key[pos]) == q) & (codes >= 0) & (codes < self.width) & (nodes >= 0)
        return np.where(ok, pos, -1)

    def walk(self, prefixes: np.ndarray) -> np.ndarray:
        """The node of each code prefix (M, t), -1 for a prefix no item has."""
        prefixes = np.asarray(prefixes, dtype=np.int64)
        nodes = np.zeros(len(prefixes), dtype=np.int64)
        for level in range(prefixes.shape[1]):
            ok = nodes >= 0
            nodes[ok] = self.child(nodes[ok], prefixes[ok, level])
        return nodes

    def allowed(self, prefix) -> np.ndarray:
        """The codes that may follow ``prefix`` (a sequence of codes, shorter than the levels), ascending."""
        node = int(self.walk(np.asarray([list(prefix)], dtype=np.int64).reshape(1, -1))[0])
        if node < 0 or node >= self.leaf_start:
            return np.zeros(0, dtype=np.int64)
        return self.expand(np.array([node]))[1]

    def item_of(self, leaves: np.ndarray) -> np.ndarray:
        return np.asarray(self.items[np.asarray(leaves, dtype=np.int64) - self.leaf_start])

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        """Item ids of full code sequences (M, L), -1 where no item has the sequence."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != self.levels:
            raise ValueError(f"lookup needs full code sequences of {self.levels} levels, got shape {codes.shape}")
        nodes = self.walk(codes)
        out = np.full(len(nodes), -1, dtype=np.int64)
        ok = nodes >= 0
        out[ok] = self.item_of(nodes[ok])
        return out
