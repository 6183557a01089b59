#!/usr/bin/env python
"""Train a TIGER-style generative recommender over semantic IDs (see `--help` and the README).

Local:   python jobs/train_generative.py --sequences data/beauty/user_sequences --tokens out/beauty-tokens
Cluster: python jobs/submit.py --address http://HEAD:8265 -- python jobs/train_generative.py ... --train.num_workers 4
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a `--working-dir .` upload too

from semrec.pipelines.train_generative import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
