#!/usr/bin/env python
"""Scheduled retraining: every step of a TOML pipeline as one versioned, resumable, gated run (see the README).

    python jobs/retrain.py run --config infra/retrain.beauty.toml
    python jobs/retrain.py status --root out/retrain
    python jobs/retrain.py rollback --root out/retrain [--to VERSION]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a `--working-dir .` upload too

from semrec.pipelines.retrain import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
