"""Training loops that run on Ray Train."""
