"""sparsekit: post-training sparsification of large language models."""

__version__ = "0.1.0"
