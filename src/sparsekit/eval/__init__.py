"""Evaluation: perplexity with the SparseGPT/Wanda protocol."""
