#!/usr/bin/env python
"""Serve a DMQN model + its user-state cache over HTTP with Ray Serve (see `--help` and the README).

Local:   python jobs/serve_dmqn.py --model out/dmqn/model --cache out/user_cache      # Ctrl-C stops it
Cluster: ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/serve_dmqn.py \
             --model /shared/dmqn/model --cache /shared/user_cache --host 0.0.0.0 --detach
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a `--working-dir .` upload too

from semrec.pipelines.serve_dmqn import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
