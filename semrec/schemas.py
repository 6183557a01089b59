"""Arrow schemas of every table semrec reads or writes, and their Parquet metadata.

The human documentation of these schemas lives in ``schemas/README.md`` at the top of the
repository; ``schemas/*.json`` are generated from this module (``python -m semrec.schemas``)
and a test keeps them in sync.

Conventions
- ids are ``int64`` and unique per table (item ids in ``items``/``item_embeddings``/``token_table``).
- code columns of a token table are named ``c0 .. c{L-1}`` and are ``uint8`` when the codebook of
  that level has at most 256 entries, ``uint16`` up to 65,536; larger codebooks are refused.
- Parquet key-value metadata is stored under keys prefixed ``semrec.`` (values are JSON strings).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from semrec.errors import InputError

SCHEMA_VERSION = 1
META_PREFIX = "semrec."
MAX_CODEBOOK_SIZE = 65_536


@dataclass(frozen=True)
class TableSpec:
    """A named table layout: required fields, optional fields, and a one-line doc per field."""

    name: str
    doc: str
    required: tuple[pa.Field, ...]
    optional: tuple[pa.Field, ...] = ()
    field_docs: dict[str, str] = field(default_factory=dict)

    def schema(self, with_optional: bool = True) -> pa.Schema:
        fields = list(self.required) + (list(self.optional) if with_optional else [])
        return pa.schema(fields)

    def to_json(self) -> dict[str, Any]:
        def f(x: pa.Field, required: bool) -> dict[str, Any]:
            return {"name": x.name, "type": str(x.type), "nullable": x.nullable,
                    "required": required, "doc": self.field_docs.get(x.name, "")}
        return {"name": self.name, "schema_version": SCHEMA_VERSION, "doc": self.doc,
                "fields": [f(x, True) for x in self.required] + [f(x, False) for x in self.optional]}


ITEMS = TableSpec(
    name="items",
    doc="Item catalogue: one row per item, with the text fields the item tokenizer embeds.",
    required=(pa.field("item_id", pa.int64(), nullable=False), pa.field("title", pa.string())),
    optional=(
        pa.field("description", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("categories", pa.list_(pa.string())),
    ),
    field_docs={
        "item_id": "unique item id",
        "title": "item title (may be null/empty only if another text field is non-empty)",
        "description": "free text",
        "brand": "brand or publisher",
        "categories": "category path or tags, most general first",
    },
)

USER_SEQUENCES = TableSpec(
    name="user_sequences",
    doc="One row per user: the user's item ids in chronological order (oldest first).",
    required=(pa.field("user_id", pa.int64(), nullable=False), pa.field("item_ids", pa.list_(pa.int64()))),
    optional=(pa.field("timestamps", pa.list_(pa.int64())),),
    field_docs={"user_id": "unique user id", "item_ids": "chronological item ids",
                "timestamps": "unix seconds, same length as item_ids"},
)

INTERACTIONS = TableSpec(
    name="interactions",
    doc="One row per event (view, click, purchase, impression).",
    required=(pa.field("user_id", pa.int64(), nullable=False), pa.field("item_id", pa.int64(), nullable=False)),
    optional=(
        pa.field("timestamp", pa.int64()),
        pa.field("event", pa.string()),
        pa.field("label", pa.int8()),
        pa.field("impression_id", pa.int64()),
    ),
    field_docs={"timestamp": "unix seconds", "event": "event type, e.g. pv/cart/fav/buy/click",
                "label": "1 clicked / 0 shown not clicked (impression logs)",
                "impression_id": "groups the candidates shown together"},
)


CTR_SAMPLES = TableSpec(
    name="ctr_samples",
    doc="One row per impression: a click label and one categorical feature id per field, over one global "
        "feature vocabulary (Parquet metadata semrec.n_features, semrec.fields).",
    required=(pa.field("label", pa.int8(), nullable=False), pa.field("features", pa.list_(pa.int64()))),
    optional=(pa.field("impression_id", pa.int64()), pa.field("user_id", pa.int64()), pa.field("item_id", pa.int64())),
    field_docs={"label": "1 clicked / 0 not clicked", "features": "global feature ids, one per field in field "
                                                                  "order (the same number in every row)",
                "impression_id": "groups the candidates shown together (nDCG@5 per impression)",
                "user_id": "the user (joins the histories / user token tables; paradigm models)",
                "item_id": "the item (joins the item token / embedding tables; paradigm models)"},
)


def embeddings_spec(dim: int, dtype: pa.DataType | None = None) -> TableSpec:
    emb_type = pa.list_(dtype or pa.float32(), dim)
    return TableSpec(
        name="item_embeddings",
        doc="Dense item vectors: fixed_size_list<float32|float16, d>, one row per item.",
        required=(pa.field("item_id", pa.int64(), nullable=False), pa.field("embedding", emb_type)),
        field_docs={"embedding": "fixed_size_list<float32 or float16, d>; finite values only"},
    )


def code_type(codebook_size: int) -> pa.DataType:
    """uint8 up to 256 codes, uint16 up to 65,536; anything larger is refused."""
    if codebook_size < 1:
        raise InputError(f"codebook size must be >= 1, got {codebook_size}")
    if codebook_size <= 256:
        return pa.uint8()
    if codebook_size <= MAX_CODEBOOK_SIZE:
        return pa.uint16()
    raise InputError(
        f"codebook size {codebook_size} > {MAX_CODEBOOK_SIZE:,}: token tables store codes as uint8/uint16"
    )


def token_table_schema(codebook_sizes: list[int], metadata: dict[str, Any] | None = None,
                       key: str = "item_id") -> pa.Schema:
    """Item token table (``key`` item_id: codes + collision suffix) or user token table (``key`` user_id:
    codes only; users sharing a code tuple share a token, by design)."""
    fields = [pa.field(key, pa.int64(), nullable=False)]
    fields += [pa.field(f"c{i}", code_type(c), nullable=False) for i, c in enumerate(codebook_sizes)]
    if key == "item_id":
        fields.append(pa.field("suffix", pa.uint16(), nullable=False))
    schema = pa.schema(fields)
    return schema.with_metadata(encode_metadata(metadata)) if metadata else schema


def token_table_spec(codebook_sizes: list[int] | None = None) -> TableSpec:
    sizes = codebook_sizes or [256, 256, 256]
    s = token_table_schema(sizes)
    return TableSpec(
        name="token_table",
        doc="Discrete semantic codes: item id, one code column per level (c0 coarsest), and a collision "
            "suffix that makes (c0..c{L-1}, suffix) unique per item.",
        required=tuple(s),
        field_docs={"c0": "code of level 0 (uint8 if codebook <= 256 else uint16); c1, c2... likewise",
                    "suffix": "0..k-1 inside each group of k items sharing a code tuple, ordered by item_id"},
    )


def user_token_table_spec(codebook_sizes: list[int] | None = None) -> TableSpec:
    s = token_table_schema(codebook_sizes or [256, 256, 256], key="user_id")
    return TableSpec(
        name="user_token_table",
        doc="Discrete user codes (UIST user tokens): user id and one code column per level (c0 coarsest). "
            "No suffix: users with the same tuple share a token.",
        required=tuple(s),
        field_docs={"c0": "code of level 0 (uint8 if codebook <= 256 else uint16); c1, c2... likewise"},
    )


def encode_metadata(meta: dict[str, Any]) -> dict[bytes, bytes]:
    out = {f"{META_PREFIX}schema_version".encode(): str(SCHEMA_VERSION).encode()}
    for k, v in meta.items():
        out[f"{META_PREFIX}{k}".encode()] = json.dumps(v, sort_keys=True).encode()
    return out


def decode_metadata(schema: pa.Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (schema.metadata or {}).items():
        key = k.decode()
        if key.startswith(META_PREFIX):
            out[key[len(META_PREFIX):]] = json.loads(v.decode())
    return out


def _type_ok(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual.equals(expected):
        return True
    # accept large/view string variants and large lists of the right value type
    if pa.types.is_string(expected) and (pa.types.is_large_string(actual) or pa.types.is_string_view(actual)):
        return True
    if pa.types.is_list(expected) and (pa.types.is_list(actual) or pa.types.is_large_list(actual)):
        return _type_ok(actual.value_type, expected.value_type)
    if pa.types.is_int64(expected) and pa.types.is_integer(actual):
        return True
    return False


def check_schema(schema: pa.Schema, spec: TableSpec, where: str) -> None:
    """Raise InputError naming ``where`` (a file) and the column if ``schema`` does not fit ``spec``."""
    names = set(schema.names)
    for f in spec.required:
        if f.name not in names:
            raise InputError(f"{where}: missing required column '{f.name}' ({spec.name} needs "
                             f"{', '.join(x.name for x in spec.required)}; found {', '.join(schema.names)})")
    for f in list(spec.required) + list(spec.optional):
        if f.name in names and not _type_ok(schema.field(f.name).type, f.type):
            raise InputError(f"{where}: column '{f.name}' has type {schema.field(f.name).type}, expected {f.type}")


def check_embedding_schema(schema: pa.Schema, where: str, key: str = "item_id") -> int:
    """Validate an item_embeddings schema (``key`` user_id: user_embeddings); returns the dimension d."""
    name = f"{key[:-3]}_embeddings"
    check_schema(schema, TableSpec(name, "", (pa.field(key, pa.int64()),)), where)
    if "embedding" not in schema.names:
        raise InputError(f"{where}: missing required column 'embedding' ({name} needs {key}, embedding)")
    t = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(t) or t.value_type not in (pa.float32(), pa.float16()):
        raise InputError(f"{where}: column 'embedding' has type {t}, expected fixed_size_list<float32|float16, d>")
    return t.list_size


ALL_SPECS = {s.name: s for s in (ITEMS, embeddings_spec(384), token_table_spec(), user_token_table_spec(),
                                  USER_SEQUENCES, INTERACTIONS, CTR_SAMPLES)}


def dump_json(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, spec in ALL_SPECS.items():
        p = out_dir / f"{name}.json"
        p.write_text(json.dumps(spec.to_json(), indent=2) + "\n")
        paths.append(p)
    return paths


if __name__ == "__main__":  # python -m semrec.schemas [out_dir]
    import sys
    for p in dump_json(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")):
        print(p)
