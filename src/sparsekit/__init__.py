"""sparsekit: post-training sparsification of large language models."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`sparsekit.load(path, device=..., dtype=...)`: run an exported (or pruned) model."""
    if name == "load":
        from sparsekit.export.loader import load

        return load
    raise AttributeError(f"module 'sparsekit' has no attribute {name!r}")
