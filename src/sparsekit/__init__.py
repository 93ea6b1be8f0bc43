"""sparsekit: post-training sparsification of large language models.

The library API (each command of the CLI is one of these calls; see the README)::

    import sparsekit
    recipe = sparsekit.make_recipe(method="sparsegpt", pattern="2:4",
                                   calibration=sparsekit.make_calibration(data="valid.txt"))
    result = sparsekit.prune("demo", recipe, output="gemma-2of4")
    sparsekit.evaluate("gemma-2of4", data="test.txt")
    model, tokenizer = sparsekit.load("gemma-2of4")

Names are resolved on first use, so ``import sparsekit.kernels`` (or any submodule) loads only
what it needs.
"""

from sparsekit.version import __version__

_API = {
    "load": "sparsekit.loading",
    "LoadedModel": "sparsekit.loading",
    "make_recipe": "sparsekit.recipe",
    "make_calibration": "sparsekit.recipe",
    "recipe_from_json": "sparsekit.recipe",
    "Recipe": "sparsekit.recipe",
    "Calibration": "sparsekit.recipe",
    "calibrate": "sparsekit.workflows.calibrate",
    "prune": "sparsekit.workflows.prune",
    "evaluate": "sparsekit.workflows.evaluate",
    "export": "sparsekit.workflows.export",
    "bench": "sparsekit.workflows.bench",
    "info": "sparsekit.workflows.info",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """The library API, imported on first use (the one lazy import of the package: it keeps
    ``import sparsekit.<submodule>`` from importing every workflow)."""
    if name in _API:
        from importlib import import_module

        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'sparsekit' has no attribute {name!r}")
