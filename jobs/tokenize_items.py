#!/usr/bin/env python
"""Tokenize an item catalogue into a semantic token table (see `--help` and the README).

Local:   python jobs/tokenize_items.py --sample 2000 --output out/demo
Cluster: ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/tokenize_items.py --items ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a `--working-dir .` upload too

from semrec.pipelines.tokenize_items import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
