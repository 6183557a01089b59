"""Pipelines: the Ray programs behind the jobs in jobs/."""
