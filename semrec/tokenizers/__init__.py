"""Tokenizers: from quantizer codes to unique token sequences (collision suffixes, partitioning)."""
