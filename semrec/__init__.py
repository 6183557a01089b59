"""semrec: semantic tokens for recommendation, built on Ray."""

import os

# MKL's strict conditional numerical reproducibility: its gemm gives the same bits at any thread count. Without
# it, on AVX-512 machines an RQ-VAE fit at 1 and at 2 threads differs (measured; tests/test_determinism.py), so
# a `ray job submit` driver (1 thread) and a laptop run would publish different tokens. MKL reads this at its
# first call, so setting it on import (before any torch computation) is enough; a value set outside wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
