"""Convert public dataset formats (or the synthetic generator) into semrec tables.

Writes ``<output>/<table>/part-00000.parquet`` for each table the format yields (items,
user_sequences, interactions, item_embeddings) plus ``_MANIFEST.json``, published atomically.
"""

from __future__ import annotations

import logging

from semrec.config import write_effective
from semrec.config.settings import PrepareDataSettings
from semrec.data.io import write_manifest, write_table
from semrec.data.output import job_output
from semrec.errors import InputError

log = logging.getLogger("semrec.prepare_data")


def run(s: PrepareDataSettings) -> dict:
    with job_output(s.output, "prepare_data", [*s.input, s.config], s.overwrite) as stage:
        counts: dict[str, int] = {}
        if s.format == "synthetic":
            from semrec.data.synthetic import write_catalogue, write_sequences
            from semrec.pipelines.runtime import init_ray

            init_ray(s.ray)
            files = write_catalogue(stage / "items", s.items, seed=s.seed, rows_per_shard=s.rows_per_shard,
                                    embedding_dim=s.embedding_dim, with_text=s.text)
            counts["items"] = s.items
            if s.embedding_dim:  # items carry the embedding column; also expose it as item_embeddings
                import pyarrow.parquet as pq

                (stage / "item_embeddings").mkdir()
                for f in files:
                    write_table(pq.read_table(f, columns=["item_id", "embedding"]), stage / "item_embeddings" / f.name)
                counts["item_embeddings"] = s.items
            if s.users:
                write_sequences(stage / "user_sequences", s.users, s.items, seed=s.seed,
                                rows_per_shard=s.rows_per_shard, long_length=s.long_length, future=s.future)
                counts["user_sequences"] = s.users
        elif s.format == "subset":
            from semrec.data.subset import subset

            if len(s.input) not in (1, 2):
                raise InputError("--format subset takes --input USER_SEQUENCES [ITEMS]")
            for name, table in subset(s.input[0], s.input[1] if len(s.input) > 1 else None, s.items, s.users,
                                      s.seed).items():
                (stage / name).mkdir()
                write_table(table, stage / name / "part-00000.parquet")
                counts[name] = table.num_rows
        elif s.format == "clicks":
            from semrec.data.clicks import clicks_from

            for name, table in clicks_from(s.input, s.negatives, s.history_fraction, s.seed, s.min_rating,
                                           s.impressions).items():
                (stage / name).mkdir()
                write_table(table, stage / name / "part-00000.parquet")
                counts[name] = table.num_rows
        else:
            from semrec.data.adapters import convert

            for name, table in convert(s.format, list(s.input)).items():
                (stage / name).mkdir()
                write_table(table, stage / name / "part-00000.parquet")
                counts[name] = table.num_rows
        write_manifest(stage, format=s.format, tables=counts, inputs=[str(p) for p in s.input])
        write_effective(s, stage / "effective_config.json")
    for name, n in counts.items():
        print(f"{name}: {n} rows -> {s.output / name}")
    return counts


def main(argv: list[str] | None = None) -> int:
    from semrec.pipelines.runtime import job_main

    return job_main(PrepareDataSettings, run, "prepare_data", argv)
