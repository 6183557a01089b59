"""Class-based Ray Data UDFs: each loads its model once per actor in ``__init__``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from semrec.errors import InputError


def embedding_matrix(batch: pa.Table, where: str | None = None, key: str = "item_id") -> np.ndarray:
    """(n, d) float32 from an ``embedding`` column (fixed_size_list or Ray's tensor extension)."""
    where = where or ("item_embeddings" if key == "item_id" else "user_embeddings")
    col = batch.column("embedding").combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        x = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    else:  # ArrowTensorArray and friends
        x = np.asarray(col.to_numpy(zero_copy_only=False))
        x = np.stack(x) if x.dtype == object else x
    if col.null_count:
        raise InputError(f"{where}: null embedding for {key} {batch.column(key)[col.is_null().index(True).as_py()]}")
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        ids = batch.column(key).to_numpy()[bad][:5].tolist()
        raise InputError(f"{where}: NaN or inf in the embeddings of {key} {ids} ({int(bad.sum())} rows in this batch)")
    return x


def embeddings_array(x: np.ndarray, dtype: str = "float32") -> pa.FixedSizeListArray:
    flat = pa.array(x.astype(np.float16 if dtype == "float16" else np.float32, copy=False).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, x.shape[1])


def piece_slices(pieces: pa.Table, columns: list[str] | None, rows: int):
    """The rows of Parquet pieces (``path``, ``row_group``, ``start``, ``rows``; ``parquet_pieces``) in slices of
    at most ``rows``, reading one row group (only ``columns``) at a time: Ray Data UDFs with the read fused in."""
    from semrec.data.io import read_row_group

    for piece in pieces.to_pylist():  # a batch of batch_size=1 pieces: one row group in memory
        table = read_row_group(piece["path"], piece["row_group"], columns).slice(piece["start"], piece["rows"])
        for start in range(0, table.num_rows, rows):
            yield table.slice(start, rows)


class EmbedItems:
    """items batch -> (item_id, embedding fixed_size_list)."""

    def __init__(self, model_path: str | None, text_fields: list[str], empty_text: str, batch_size: int,
                 max_length: int, dtype: str, device: str, threads: int | None = None):
        from semrec.encoders.text import SentenceEncoder

        self.encoder = SentenceEncoder(model_path, device=device, max_length=max_length, batch_size=batch_size,
                                       threads=threads)
        self.text_fields, self.empty_text, self.dtype = text_fields, empty_text, dtype

    def embed(self, batch: pa.Table) -> pa.Table:
        from semrec.data.items import compose_texts

        texts = compose_texts(batch, self.text_fields, self.empty_text)
        emb = self.encoder.encode(texts)
        return pa.table({"item_id": batch.column("item_id").cast(pa.int64()),
                         "embedding": embeddings_array(emb, self.dtype)})

    __call__ = embed


class EmbedItemPieces(EmbedItems):
    """Parquet pieces (``path``, ``row_group``, ``start``, ``rows``) -> (item_id, embedding): the read fused into
    the embedding actor. Item text never crosses the object store and no list/read tasks compete with the model for CPU; the actor
    reads one row group at a time (only ``columns``) and encodes ``rows_per_call`` rows per call, so memory stays
    bounded by a row group whatever the catalogue size."""

    def __init__(self, *args, rows_per_call: int = 1024, columns: list[str] | None = None):
        super().__init__(*args)
        self.rows_per_call, self.columns = rows_per_call, columns

    def __call__(self, pieces: pa.Table):
        for table in piece_slices(pieces, self.columns, self.rows_per_call):
            yield self.embed(table)


class DenseEmbedItemPieces:
    """Parquet pieces of an items table -> (item_id, embedding): STORE's dense tokenizer (the v output states
    of its token block, flattened to v x D) loaded once per actor from a ``store.py tokenizer`` output
    (``load_dense_tokenizer``), the read fused in as in ``EmbedItemPieces``: one row group in memory at a time,
    ``rows_per_call`` items per call, forward passes of ``batch_size`` items."""

    def __init__(self, tokenizer_dir: str, batch_size: int, threads: int | None = None, rows_per_call: int = 512):
        import torch

        from semrec.models.store import load_dense_tokenizer

        if threads:
            torch.set_num_threads(threads)
        self.model, self.tok, self.spec = load_dense_tokenizer(tokenizer_dir)
        self.batch_size, self.rows_per_call = batch_size, rows_per_call

    def columns(self) -> list[str]:
        return ["item_id", *self.spec["content_fields"]]

    def embed(self, table: pa.Table) -> pa.Table:
        from semrec.models.store import content_ids, field_texts

        fields = self.spec["content_fields"]
        ids = content_ids(self.tok, field_texts(table, fields), fields, self.spec["max_content_tokens"])
        emb = self.model.embed(ids, self.tok.pad_token_id, self.batch_size)
        return pa.table({"item_id": table.column("item_id").cast(pa.int64()), "embedding": embeddings_array(emb)})

    def __call__(self, pieces: pa.Table):
        for table in piece_slices(pieces, self.columns(), self.rows_per_call):
            yield self.embed(table)


class EncodeCodes:
    """item/user embeddings batch -> (``key``, c0..c{L-1}) with the fitted quantizer, sent once per actor.

    The quantizer comes by value (as loaded back from its saved files by the driver), not as a path: an actor of
    the pool that is still starting when its Dataset finishes would otherwise read the path after the job had
    published (moved) the folder holding it, and die with a "cannot read quantizer config" traceback printed
    after the job's success."""

    def __init__(self, quantizer, threads: int | None = None, key: str = "item_id"):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.q = quantizer
        self.types, self.key = self.q.code_dtypes(), key

    def __call__(self, batch: pa.Table) -> pa.Table:
        codes = self.q.encode(embedding_matrix(batch, key=self.key))
        cols = {self.key: batch.column(self.key).cast(pa.int64())}
        for level, t in enumerate(self.types):
            cols[f"c{level}"] = pa.array(codes[:, level].astype(t.to_pandas_dtype()), type=t)
        return pa.table(cols)


class EncodeUsers:
    """user_sequences batch -> (user_id, embedding = z) with the user encoder loaded once per actor. Users
    with no items or with item ids outside the encoder's catalogue are refused, naming the user."""

    def __init__(self, encoder_dir: str, threads: int | None = None, dtype: str = "float32", chunk: int = 1024):
        import torch

        from semrec.models.user_ae import from_pretrained

        if threads:
            torch.set_num_threads(threads)
        self.model = from_pretrained(encoder_dir)
        self.n_items, self.max_len = self.model.config["n_items"], self.model.config["max_len"]
        self.dtype, self.chunk = dtype, chunk

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from semrec.data.seqbatch import RowBatch, left_pad

        rows = RowBatch.from_arrow(batch)
        rows.check(self.n_items, "user_sequences", 1, "a user token")
        ids = left_pad(rows.flat, rows.offsets[:-1], rows.lengths, self.max_len)
        with torch.inference_mode():
            z = np.concatenate([self.model.encode(torch.from_numpy(ids[i:i + self.chunk])).numpy()
                                for i in range(0, len(ids), self.chunk)]) if len(ids) else \
                np.zeros((0, self.model.config["hidden"]), np.float32)
        return pa.table({"user_id": pa.array(rows.user_ids, pa.int64()), "embedding": embeddings_array(z, self.dtype)})


class UserStates:
    """user_sequences batch -> (user_id, state, sizes): DMQN's candidate-independent user state per user
    (``ParadigmCTR.user_state`` over the last max_len behaviours: the clusters, and how many behaviours each
    holds as uint16, which ``build_cache.check_model`` bounds), the model loaded once per actor."""

    def __init__(self, model_dir: str, threads: int | None = None, dtype: str = "float16", chunk: int = 256):
        import torch

        from semrec.models.ctr.paradigms import from_pretrained

        if threads:
            torch.set_num_threads(threads)
        self.model = from_pretrained(model_dir)
        self.n_items, self.max_len = self.model.config["n_items"], self.model.config["encoder"]["max_len"]
        self.dtype, self.chunk = dtype, chunk

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from semrec.data.seqbatch import RowBatch, left_pad

        rows = RowBatch.from_arrow(batch)
        rows.check(self.n_items, "user_sequences", 1, "a cached user state")
        ids = torch.from_numpy(left_pad(rows.flat, rows.offsets[:-1], rows.lengths, self.max_len))
        states, counts = [], []
        with torch.inference_mode():
            for i in range(0, len(ids), self.chunk):
                s, m = self.model.user_state(ids[i:i + self.chunk])
                states.append(s.flatten(1).numpy())
                counts.append(m.numpy().astype(np.uint16))
        spec = self.model.config["long"]
        t, d = spec["codebooks"] * spec["codewords"], self.model.config["dim"]
        state = np.concatenate(states) if states else np.zeros((0, t * d), np.float32)
        sizes = np.concatenate(counts) if counts else np.zeros((0, t), np.uint16)
        return pa.table({"user_id": pa.array(rows.user_ids, pa.int64()), "state": embeddings_array(state, self.dtype),
                         "sizes": pa.FixedSizeListArray.from_arrays(pa.array(sizes.ravel(), pa.uint16()), t)})


class UserStatePieces(UserStates):
    """Parquet pieces (``path``, ``row_group``, ``start``, ``rows``) of user_sequences -> (user_id, state, sizes):
    the read fused into the state actor, one row group at a time, ``rows_per_call`` users per output batch, so
    no read task holds a row group beside the actors and memory stays bounded by one row group."""

    def __init__(self, *args, rows_per_call: int = 2048):
        super().__init__(*args)
        self.rows_per_call = rows_per_call

    def __call__(self, pieces: pa.Table):
        for table in piece_slices(pieces, ["user_id", "item_ids"], self.rows_per_call):
            yield super().__call__(table)
