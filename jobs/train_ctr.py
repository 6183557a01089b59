#!/usr/bin/env python
"""Train a CTR model (LR, DCN, DeepFM, FinalMLP) on Ray Train (see `--help`, README)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semrec.pipelines.train_ctr import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
