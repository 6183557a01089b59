"""Tables on disk: schemas checks, atomic publishing, real-data adapters, synthetic generators."""
