"""Benchmark suites: `.venv/bin/python -m pytest benchmarks -s` (tables land in benchmarks/results/)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")

from helpers import ray_local  # noqa: E402,F401  (session fixture)
