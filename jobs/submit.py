#!/usr/bin/env python
"""Submit a semrec job to a Ray cluster with its paths made absolute (see `--help` and infra/README.md).

python jobs/submit.py --address http://HEAD:8265 -- python jobs/tokenize_items.py --items data/items --output out/tokens
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semrec.pipelines.submit import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
