"""Evaluation: perplexity with the SparseGPT/Wanda protocol (`perplexity`) and the weight sparsity
a model actually has (`sparsity`)."""
