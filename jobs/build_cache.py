#!/usr/bin/env python
"""Cache every user's DMQN state (the candidate-independent part) for serving (see `--help` and the README).

Local:   python jobs/build_cache.py --model out/dmqn/model --sequences data/clicks/histories --output out/user_cache
Cluster: ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/build_cache.py --model ... --sequences ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a `--working-dir .` upload too

from semrec.pipelines.build_cache import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
