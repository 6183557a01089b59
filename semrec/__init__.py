"""semrec: semantic tokens for recommendation, built on Ray."""

__version__ = "0.1.0"
