"""Encoders: item content -> dense vectors."""
