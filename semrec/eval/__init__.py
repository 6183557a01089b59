"""Evaluation: ranking metrics for sampled-candidate and full-ranking protocols."""
