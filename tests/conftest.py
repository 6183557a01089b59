from helpers import ray_local  # noqa: F401  (session fixture)
