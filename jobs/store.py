#!/usr/bin/env python
"""STORE: one LLM as dense item tokenizer and generative recommender (see `--help` and the README).

    python jobs/store.py prepare-model --output models/smollm2-135m
    python jobs/store.py tokenizer --items data/beauty/items --model_path models/smollm2-135m --output out/store/tok
    python jobs/tokenize_items.py --embeddings out/store/tok/item_embeddings --quantizer.kind pcakmeans ...
    python jobs/store.py recommend --sequences ... --tokens ... --items ... --backbone out/store/tok/backbone
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a `--working-dir .` upload too

from semrec.pipelines.store import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
