"""Which path multiplies M rows by a 2:4 weight: pure functions of (M, dtype, GPU capability)
over tables measured by ``benchmarks/kernel_speed.py --tune``.

A table is a tuple of entries ``(max_m, backend, config)`` in ascending ``max_m`` (``None`` =
no bound); the first entry with ``M <= max_m`` wins:

* ``"triton"``: sparsekit's kernels with ``config`` (a
  :meth:`~sparsekit.kernels.sparse24_triton.Sparse24Config.short` string: "gemv:..." for
  M <= 4 on CUDA cores, "mma:..." on tensor cores);
* ``"cusparselt"``: cuSPARSELt, if the layer holds a cuSPARSELt copy of its weight (built
  on request, see :func:`~sparsekit.runtime.sparse24_linear.sparsify_model_24`), else the
  Triton ``config`` of the entry.

No path decompresses the weight to multiply it. The choice uses host-side facts only (no
device sync), so CUDA graphs and ``torch.compile`` see a fixed path for fixed shapes. CPU
tensors always take the plain-torch reference path (:data:`CPU_BACKEND`).
"""

from __future__ import annotations

import functools

import torch

from sparsekit.dtypes import dtype_name
from sparsekit.kernels.sparse24_triton import Sparse24Config

PANEL_GROUPS = 16  # panel width (groups) of the runtime layout that every table assumes
CPU_BACKEND = "torch"
BACKENDS = ("triton", "cusparselt")

Entry = tuple  # (max_m: int | None, backend: str, config: str)

# Untuned defaults: tiles that follow the layout rule, compiled for sm_90 without spills.
DEFAULT_DISPATCH: tuple[Entry, ...] = (
    (4, "triton", "gemv:bn8:bg64:o4:s:p1:w4:s1"),
    (16, "triton", "mma:bn64:bg16:bm16:o4:s:p1:w8:s3"),
    (32, "triton", "mma:bn64:bg16:bm32:o4:s:p1:w8:s3"),
    (64, "triton", "mma:bn64:bg16:bm64:o4:s:p1:w8:s3"),
    (None, "triton", "mma:bn64:bg16:bm128:o2:s:p1:w8:s3"),
)

# (major, minor, dtype name) -> table; paste the output of `benchmarks/kernel_speed.py --tune`
DISPATCH: dict[tuple[int, int, str], tuple[Entry, ...]] = {}


@functools.cache
def parse_config(text: str) -> Sparse24Config:
    return Sparse24Config.parse(text)


def table_for(dtype: torch.dtype, capability: tuple[int, int]) -> tuple[Entry, ...]:
    return DISPATCH.get((capability[0], capability[1], dtype_name(dtype)), DEFAULT_DISPATCH)


def choose(m: int, dtype: torch.dtype,
           capability: tuple[int, int] | None) -> tuple[str, Sparse24Config | None]:
    """(backend, Triton config) for M rows of ``dtype`` on a GPU of ``capability``
    (``None`` = CPU: ``("torch", None)``). For "cusparselt" the config is the fallback used
    when the layer has no cuSPARSELt copy."""
    if capability is None:
        return CPU_BACKEND, None
    table = table_for(dtype, capability)
    for max_m, backend, config in table:
        if max_m is None or m <= max_m:
            return backend, parse_config(config)
    _, backend, config = table[-1]
    return backend, parse_config(config)


def check_table(table: tuple[Entry, ...]) -> None:
    """Raise ValueError unless ``table`` is well formed (ascending bounds, last unbounded,
    known backends, parsable configs, gemv only where M <= 4)."""
    last = 0
    for i, (max_m, backend, config) in enumerate(table):
        if backend not in BACKENDS:
            raise ValueError(f"entry {i}: unknown backend {backend!r}")
        cfg = parse_config(config)
        if max_m is None:
            if i != len(table) - 1:
                raise ValueError(f"entry {i}: only the last entry may be unbounded")
        elif max_m <= last:
            raise ValueError(f"entry {i}: bounds must increase")
        if cfg.kernel == "gemv" and (max_m is None or max_m > 4):
            raise ValueError(f"entry {i}: the gemv kernel serves M <= 4 only")
        last = max_m or last
    if table and table[-1][0] is not None:
        raise ValueError("the last entry must have max_m None")


for _table in (DEFAULT_DISPATCH, *DISPATCH.values()):  # a pasted table that is malformed fails at import
    check_table(_table)
