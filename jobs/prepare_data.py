#!/usr/bin/env python
"""Convert a public dataset (S3-Rec, Beauty titles, LETTER, MovieLens, MIND, Taobao) or a synthetic
generator into semrec's Parquet tables. See `--help` and the README (Data adapters)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semrec.pipelines.prepare_data import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
