"""Decoding over semantic IDs: the code trie (flat, memory-mapped), trie-constrained beam search, and the same
constraint for any Hugging Face model (``semrec.decoding.hf``)."""

from semrec.decoding.beam import beam_search, beam_search_reference
from semrec.decoding.trie import CodeTrie

__all__ = ["CodeTrie", "beam_search", "beam_search_reference"]
