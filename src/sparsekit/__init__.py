"""sparsekit: post-training sparsification of large language models.

``sparsekit.load(path)`` returns ``(model, tokenizer)`` for any directory sparsekit wrote: a
pruned model, or an export in any format (sparse24 runs with 2:4 sparse linears, bitmask is
decoded to dense weights, dense is a plain checkpoint). Plain transformers loads pruned
directories and dense exports, and refuses the compressed formats (it cannot decode them).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`sparsekit.load(path, device=..., dtype=...)`: run an exported (or pruned) model."""
    if name == "load":
        from sparsekit.export.loader import load

        return load
    raise AttributeError(f"module 'sparsekit' has no attribute {name!r}")
