#!/usr/bin/env python
"""Tokenize users into a user token table (UIST user tokens) (see `--help` and the README).

Local:   python jobs/tokenize_users.py --sequences data/user_sequences --item_tokens out/tokens --output out/user_tokens
Cluster: ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/tokenize_users.py --sequences ... --item_tokens ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a `--working-dir .` upload too

from semrec.pipelines.tokenize_users import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
