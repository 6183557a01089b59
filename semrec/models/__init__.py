"""Recommendation models that consume item ids and semantic tokens."""
