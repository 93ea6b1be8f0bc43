"""Pruning math: masks, Wanda scores and SparseGPT (pure tensor functions, no model glue)."""
